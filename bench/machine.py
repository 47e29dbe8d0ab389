"""The facts that make a benchmark reproducible: hardware, package versions, git commit, and how
much of the CPU other work took while the benchmark ran."""
from __future__ import annotations

import importlib.metadata
import os
import pathlib
import platform
import subprocess
import time
from dataclasses import dataclass

import psutil

_PACKAGES = ("torch", "transformers", "sentence-transformers", "llama_cpp_python", "grpcio")


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int
    memory_gib: float
    gpu: str | None
    os: str
    python: str
    packages: dict[str, str]
    commit: str

    def device_label(self, device: str) -> str:
        """A heading naming what generated the tokens: the GPU, else the CPU and its cores."""
        if device.startswith("cuda"):
            return f"GPU: {self.gpu or device}"
        return f"CPU: {self.cpu}, {self.cores} cores"


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds spent so far by the whole machine and by this run (this process and every
    descendant it has waited for, which includes stopped servers and finished loadgen runs)."""

    machine_s: float
    run_s: float
    at: float

    @classmethod
    def take(cls) -> CpuSnapshot:
        times, own = psutil.cpu_times(), os.times()
        busy = times.user + times.nice + times.system + getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)
        # Time the hypervisor gave to other machines counts as other work too.
        busy += getattr(times, "steal", 0.0)
        return cls(busy, own.user + own.system + own.children_user + own.children_system, time.monotonic())


def other_work_share(start: CpuSnapshot, end: CpuSnapshot) -> float:
    """The share of the machine's CPU capacity that work outside this run used between two snapshots."""
    others = (end.machine_s - start.machine_s) - (end.run_s - start.run_s)
    return max(0.0, others) / ((end.at - start.at) * (psutil.cpu_count() or 1))


def _run(command: list[str], cwd: pathlib.Path | None = None) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=cwd, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _commit(root: pathlib.Path) -> str:
    commit = _run(["git", "rev-parse", "--short", "HEAD"], root)
    if commit is None:
        return "unknown"
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], root)
    return f"{commit} (with uncommitted changes)" if dirty else commit


def describe(root: pathlib.Path) -> Machine:
    gpu = _run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"])
    return Machine(
        cpu=_cpu_model(),
        cores=len(os.sched_getaffinity(0)),
        memory_gib=round(psutil.virtual_memory().total / 2**30, 1),
        gpu=gpu.splitlines()[0] if gpu else None,
        os=platform.platform(),
        python=platform.python_version(),
        packages={name: _version(name) for name in _PACKAGES},
        commit=_commit(root),
    )
