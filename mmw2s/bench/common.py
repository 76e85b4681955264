"""What every comparison shares: the row format, peer checks, subprocess settings, the table.

A row is `{name, ours, theirs, unit, ratio, target, met}` plus `details`; a comparison that
cannot run has `skipped: reason` and null numbers. `ratio` is always ours / theirs; `better`
says which way the target points (memory: lower is better).
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal, Sequence

INSTALL_HINT = "pip install -e .[bench]"
REPO_ROOT = Path(__file__).resolve().parents[2]


def row(name: str, ours: float, theirs: float, unit: str, target: float | None,
        better: Literal["higher", "lower"] = "higher", **details: Any) -> dict:
    """A measured comparison; `met` says whether ours / theirs reaches `target` in the `better` way
    (None for a row reported without a target, e.g. the GPU utilisation rows)."""
    ratio = ours / theirs if theirs else float("inf")
    met = None if target is None else (ratio >= target if better == "higher" else ratio <= target)
    return {"name": name, "ours": round(ours, 3), "theirs": round(theirs, 3), "unit": unit,
            "ratio": round(ratio, 3), "target": target, "better": better, "met": None if met is None else bool(met),
            "details": details}


def skipped(name: str, reason: str, unit: str = "", target: float | None = None) -> dict:
    """A comparison that did not run, and why (a missing peer is never a crash)."""
    return {"name": name, "ours": None, "theirs": None, "unit": unit, "ratio": None,
            "target": target, "met": None, "skipped": reason, "details": {}}


def missing_peer(*modules: str) -> str | None:
    """None when every module imports, else the skip reason naming the first that does not."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exn:  # noqa: BLE001 - a peer that fails on import is as missing as one not installed
            return f"skipped: {module} unavailable ({type(exn).__name__}: {exn}); {INSTALL_HINT}"
    return None


def child_env(threads: int) -> dict[str, str]:
    """The environment of every measured subprocess, ours and theirs: offline, same thread count."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p))
    return env


def run_child(args: Sequence[str], threads: int, log_path: Path, timeout: float = 1800) -> None:
    """Run `python ARGS` with the bench environment; its output goes to `log_path`.

    Raises RuntimeError with the log's tail when it fails.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.run([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                              env=child_env(threads), cwd=REPO_ROOT, timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"`python {' '.join(args[:3])} ...` failed ({proc.returncode}); {log_path}:\n{tail}")


def set_threads(threads: int) -> None:
    """The same intra-op thread count for the in-process comparisons as for the subprocesses."""
    import torch

    torch.set_num_threads(threads)


def format_table(rows: list[dict]) -> str:
    """One plain-text table: name, ours, theirs, unit, ratio, target, met (or the skip reason)."""
    head = f"{'comparison':<11} {'ours':>10} {'theirs':>10}  {'unit':<10} {'ratio':>7}  {'target':<8} met"
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"{r['name']:<11} {r['skipped']}")
            continue
        sign = ">=" if r["better"] == "higher" else "<="
        target = f"{sign}{r['target']:<6}" if r["target"] is not None else f"{'-':<8}"
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        lines.append(f"{r['name']:<11} {r['ours']:>10.4g} {r['theirs']:>10.4g}  {r['unit']:<10} "
                     f"{r['ratio']:>7.3f}  {target} {met}")
    peaks = sorted({r["details"]["peak"] for r in rows if r.get("details", {}).get("peak")})
    lines += [f"gpu rows: ours / theirs = achieved / bound at the peak of {p}" for p in peaks]
    return "\n".join(lines)
