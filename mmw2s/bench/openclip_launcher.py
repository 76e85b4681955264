"""`python -m mmw2s.bench.openclip_launcher ARGS`: open_clip_train as `mmw2s-open-clip-train` runs it.

Kept for the bench's subprocess; the launcher and its one compatibility fix live in `mmw2s.peers`.
"""
from __future__ import annotations

import sys

from mmw2s.peers import open_clip_train_main

if __name__ == "__main__":
    open_clip_train_main(sys.argv[1:])
