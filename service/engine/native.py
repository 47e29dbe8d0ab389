"""tokenwire's own CPU kernels, compiled for this machine on first use:
- `tokenwire::w4a8_linear` (w4a8.cpp): 4-bit weights times 8-bit activations, for the int4
  layers of quantized.py;
- `tokenwire::decode_attention` (decode_attention.cpp): decode steps' attention, in place in the
  KV cache, for llama.py.

The library is built with the C++ compiler and torch's headers into
`<cache dir>/kernels/tokenwire_kernels-<digest>.so`, the digest covering the sources, the torch
version and the flags: a changed source or a new torch builds afresh. Each build goes to a file of
its own and is renamed into place, so workers starting together never wait on a lock or load half
a file, and a build killed midway leaves nothing behind but a temporary file. A library built
ahead (`python -m service.engine.native DIR`, as the Docker image does) is found in DIR through
`TOKENWIRE_KERNEL_DIR`.

Without a compiler, torch headers or AVX512-VNNI, `available()` is False, and the callers use
torch's own kernels instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile

import torch

from service.config import default_cache_dir

log = logging.getLogger(__name__)

_HERE = pathlib.Path(__file__).parent
SOURCES = (_HERE / "w4a8.cpp", _HERE / "decode_attention.cpp")
_HEADERS = (_HERE / "simd.h",)
DECODE_HEAD_DIMS = (32, 64, 128)  # the head sizes decode_attention.cpp is built for
_FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared")

# Defined here rather than in the library, so that TorchScript resolves the ops (and compiles the
# forward that calls them) even where the library is not built; their kernels come from it.
_LIBRARY = torch.library.Library("tokenwire", "DEF")
_LIBRARY.define("w4a8_linear(Tensor x, Tensor packed) -> Tensor")
_LIBRARY.define(
    "decode_attention(Tensor q, Tensor k, Tensor v, Tensor(a!) keys, Tensor(b!) values, Tensor slots, "
    "Tensor positions, float scale) -> Tensor"
)


def default_directory() -> pathlib.Path:
    """Where `tokenwire worker` keeps built kernels by default."""
    return default_cache_dir() / "kernels"


def library_name() -> str:
    digest = hashlib.sha256()
    for path in SOURCES + _HEADERS:
        digest.update(path.read_bytes())
    digest.update(f"{torch.__version__} {' '.join(_FLAGS)}".encode())
    return f"tokenwire_kernels-{digest.hexdigest()[:16]}.so"


def build(directory: pathlib.Path) -> pathlib.Path:
    """Compiles the library into `directory` unless it is there already; returns its path.
    Raises OSError or subprocess.CalledProcessError when it cannot."""
    target = directory / library_name()
    if target.exists():
        return target
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise OSError("no C++ compiler (c++ or g++) on PATH")
    from torch.utils import cpp_extension  # imports setuptools: only when building

    directory.mkdir(parents=True, exist_ok=True)
    includes = [flag for path in cpp_extension.include_paths() for flag in ("-isystem", path)]
    libraries = [flag for path in cpp_extension.library_paths() for flag in (f"-L{path}", f"-Wl,-rpath,{path}")]
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}"
    fd, partial = tempfile.mkstemp(dir=directory, prefix=".build-", suffix=".so")
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *_FLAGS, abi, *includes, *map(str, SOURCES), "-o", partial, *libraries, "-lc10", "-ltorch_cpu"],
            check=True, capture_output=True, text=True,
        )
        os.replace(partial, target)
    finally:
        pathlib.Path(partial).unlink(missing_ok=True)
    for stale in directory.glob("tokenwire_kernels-*.so"):  # built from other sources or torch versions
        if stale != target:
            stale.unlink(missing_ok=True)  # a process that loaded it keeps its mapping
    return target


_available: bool | None = None


def available(directory: pathlib.Path | None = None) -> bool:
    """Whether the kernels run here. The first call loads the library (building it into
    `directory`, by default `default_directory()`), and its answer stands for the process: the
    worker makes it with its --cache-dir before it builds any layer."""
    global _available
    if _available is None:
        _available = _load(directory or default_directory())
    return _available


def _load(directory: pathlib.Path) -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    prebuilt = os.environ.get("TOKENWIRE_KERNEL_DIR")
    try:
        if prebuilt and (pathlib.Path(prebuilt) / library_name()).exists():
            path = pathlib.Path(prebuilt) / library_name()
        else:
            path = build(directory)
        if not ctypes.CDLL(str(path)).tokenwire_kernels_supported():
            log.info("tokenwire's kernels need AVX512-VNNI and AVX512-BF16: torch's kernels run instead")
            return False
        torch.ops.load_library(str(path))
        log.info("tokenwire's CPU kernels: %s", path)
    except subprocess.CalledProcessError as error:
        log.warning("building tokenwire's kernels failed, torch's run instead:\n%s", error.stderr[-2000:])
        return False
    except OSError as error:
        log.warning("cannot build or load tokenwire's kernels, torch's run instead: %s", error)
        return False
    return True


if __name__ == "__main__":
    # Builds ahead of time: into the directory given, or the default cache directory.
    built = build(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else default_directory())
    print(built)
