"""Suite-wide settings: offline, and one torch thread per process.

Tests start DataLoader workers and subprocesses of their own on a 2-core machine; one intra-op
thread each keeps them from oversubscribing the cores (measured: 5-10x slower steps otherwise).
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by subprocesses started by tests

import torch  # noqa: E402

torch.set_num_threads(1)
