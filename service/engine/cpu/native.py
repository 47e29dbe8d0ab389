"""tokenwire's own CPU kernels, compiled for this machine on first use:
- `tokenwire::w4a8_linear` (w4a8.cpp): 4-bit weights times 8-bit activations, for the int4
  layers of quantized.py;
- `tokenwire::dense_linear` (dense.cpp): float32 or bf16 weights, each row computed alike, for the
  unquantized layers of quantized.py;
- `tokenwire::paged_attention` (paged_attention.cpp): attention over the paged KV cache, in
  place, for llama.py.

The library is built with the C++ compiler and torch's headers into
`<directory>/tokenwire_kernels-<torch version>-<digest>.so`, the digest covering the sources and
the flags: a changed source or a new torch builds afresh. Each build goes to a file of its own and
is renamed into place, so workers starting together never wait on a lock or load half a file. A
build that fails is recorded next to it (`.failed`) and not tried again at every start; delete
that file to retry. Libraries that this torch version built from older sources, and build files
left behind by killed builds, are removed; other torch versions' libraries are left alone (another
environment may use them). A library built ahead (`python -m service.build_kernels DIR`, as the
Docker image does) is found in DIR through `TOKENWIRE_KERNEL_DIR`.

Without a compiler, torch headers, an x86-64 CPU or AVX512-VNNI, the kernels are unavailable and
the callers use torch's own instead. Which path runs is logged and shown on the model card: the two
give slightly different numbers, so replicas on different paths can give different tokens for a
seed.
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
import tempfile
import time

import torch

log = logging.getLogger(__name__)

_HERE = pathlib.Path(__file__).parent
SOURCES = (_HERE / "w4a8.cpp", _HERE / "dense.cpp", _HERE / "paged_attention.cpp")
_HEADERS = (_HERE / "simd.h",)
HEAD_DIMS = (32, 64, 128)  # the head sizes paged_attention.cpp is built for
_FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared")
BUILD_TIMEOUT_S = 600.0
# A build file older than this belongs to a build that was killed (a build takes ~20 s).
_STALE_BUILD_S = 3600.0

# Defined here rather than in the library, so that TorchScript resolves the ops (and compiles the
# forward that calls them) even where the library is not built; their kernels come from it.
_LIBRARY = torch.library.Library("tokenwire", "DEF")
_LIBRARY.define("w4a8_linear(Tensor x, Tensor packed) -> Tensor")
_LIBRARY.define("dense_linear(Tensor x, Tensor packed) -> Tensor")
_LIBRARY.define(
    "paged_attention(Tensor q, Tensor k, Tensor v, Tensor(a!) key_cache, Tensor(b!) value_cache, "
    "Tensor block_tables, Tensor row_tables, Tensor positions, float scale) -> Tensor"
)


def _torch_tag() -> str:
    return torch.__version__.replace("+", "_")


def library_name() -> str:
    digest = hashlib.sha256()
    for path in SOURCES + _HEADERS:
        digest.update(path.read_bytes())
    digest.update(" ".join(_FLAGS).encode())
    return f"tokenwire_kernels-{_torch_tag()}-{digest.hexdigest()[:16]}.so"


def build(directory: pathlib.Path) -> pathlib.Path:
    """Compiles the library into `directory` unless it is there already; returns its path.
    Raises OSError or subprocess.CalledProcessError / TimeoutExpired when it cannot; a failed
    compile is recorded, and later calls raise OSError at once instead of compiling again."""
    target = directory / library_name()
    if target.exists():
        return target
    failed = target.with_suffix(".failed")
    if failed.exists():
        raise OSError(f"an earlier build failed ({failed}; delete it to try again)")
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise OSError("no C++ compiler (c++ or g++) on PATH")
    from torch.utils import cpp_extension  # imports setuptools: only when building

    directory.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(directory)
    includes = [flag for path in cpp_extension.include_paths() for flag in ("-isystem", path)]
    libraries = [flag for path in cpp_extension.library_paths() for flag in (f"-L{path}", f"-Wl,-rpath,{path}")]
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}"
    fd, partial = tempfile.mkstemp(dir=directory, prefix=".build-", suffix=".so")
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *_FLAGS, abi, *includes, *map(str, SOURCES), "-o", partial, *libraries, "-lc10", "-ltorch_cpu"],
            check=True, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
        )
        os.replace(partial, target)
    except subprocess.CalledProcessError as error:
        _write_atomically(failed, error.stderr[-20_000:])
        raise
    finally:
        pathlib.Path(partial).unlink(missing_ok=True)
    return target


def _remove_leftovers(directory: pathlib.Path) -> None:
    """Libraries this torch version built from other sources, and build files of killed builds."""
    current = library_name()
    for stale in directory.glob(f"tokenwire_kernels-{_torch_tag()}-*"):
        if stale.name != current and stale.name != pathlib.Path(current).with_suffix(".failed").name:
            stale.unlink(missing_ok=True)  # a process that loaded it keeps its mapping
    for partial in directory.glob(".build-*"):
        try:
            if time.time() - partial.stat().st_mtime > _STALE_BUILD_S:
                partial.unlink(missing_ok=True)
        except FileNotFoundError:
            pass


def _write_atomically(path: pathlib.Path, text: str) -> None:
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=".build-", suffix=".failed")
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(partial, path)


_available: bool | None = None


def load(directory: pathlib.Path) -> bool:
    """Loads the library (building it into `directory` if needed) and says whether the kernels
    run here. The first call decides for the process: the worker makes it with its --cache-dir
    before it builds any layer. Logs which kernels run."""
    global _available
    if _available is None:
        _available = _load(directory)
    return _available


def available() -> bool:
    """Whether the kernels run here: False until `load` has found them usable."""
    return bool(_available)


def kernel_path() -> str:
    """What the model card shows: "tokenwire" (these kernels) or "torch"."""
    return "tokenwire" if available() else "torch"


def _load(directory: pathlib.Path) -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        log.info("tokenwire's kernels are built for x86-64 only (this is %s): torch's kernels run", platform.machine())
        return False
    prebuilt = os.environ.get("TOKENWIRE_KERNEL_DIR")
    try:
        if prebuilt and (pathlib.Path(prebuilt) / library_name()).exists():
            path = pathlib.Path(prebuilt) / library_name()
        else:
            path = build(directory)
        if not ctypes.CDLL(str(path)).tokenwire_kernels_supported():
            log.info("tokenwire's kernels need AVX512-VNNI: torch's kernels run instead")
            return False
        torch.ops.load_library(str(path))
    except subprocess.CalledProcessError as error:
        log.warning("building tokenwire's kernels failed, torch's run instead:\n%s", error.stderr[-2000:])
        return False
    except (OSError, subprocess.TimeoutExpired) as error:
        log.warning("cannot build or load tokenwire's kernels, torch's run instead: %s", error)
        return False
    log.info("tokenwire's CPU kernels run: %s", path)
    return True
