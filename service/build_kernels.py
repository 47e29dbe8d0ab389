"""`python -m service.build_kernels [DIR]`: builds tokenwire's CPU kernels ahead of the worker's
first start, into DIR or the default --cache-dir's kernels/ directory (see service/engine/cpu/native.py).
"""
from __future__ import annotations

import pathlib
import sys

from service.config import default_cache_dir
from service.engine.cpu import native

if __name__ == "__main__":
    print(native.build(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else default_cache_dir() / "kernels"))
