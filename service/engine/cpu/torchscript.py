"""Compiling the lean forward passes with TorchScript.

Why TorchScript: one call from Python runs a whole forward pass in C++ with the GIL released.
Run op by op from Python, every op hands the GIL over and must win it back from the worker's
event loop, which is busy streaming tokens and taking requests meanwhile. torch.compile keeps a
Python wrapper around its kernels and needs a C++ toolchain at run time. TorchScript is
deprecated in torch but built in.

TorchScript profiles the first call of a compiled module and optimizes its graph at the second
(about a second each for a 30-layer model): callers run two calls at load time, not in the first
request.
"""
import warnings

import torch


def script(module: torch.nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
        return torch.jit.script(module)
