"""What every run records about where its numbers came from: versions, git revision, host."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def git_revision(root: Path = PROJECT_ROOT) -> str | None:
    """The `SSMPLAN_GIT_REVISION` variable when set: whoever sends a copy of the tree to a GPU host knows
    what it holds, and the copy's .git may be stale (it read an earlier HEAD + '+dirty' once) or
    unreadable (another owner). Otherwise HEAD's hash, with '+dirty' when tracked files differ from
    it; None outside a git checkout."""
    given = os.environ.get("SSMPLAN_GIT_REVISION") or None
    if given or not (root / ".git").exists():
        return given
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    """Python, torch (and its CUDA), triton, numpy, the NVIDIA driver and its CUDA, the OS."""
    out: dict = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": _version("torch"),
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "nvidia_ml_py": _version("nvidia-ml-py"),
        "ssmplan": _version("ssmplan"),
    }
    try:
        import torch

        out["torch"] = torch.__version__
        out["torch_cuda"] = torch.version.cuda
    except ImportError:
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        drv = pynvml.nvmlSystemGetDriverVersion()
        out["driver"] = drv.decode() if isinstance(drv, bytes) else drv
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        out["driver_cuda"] = f"{cuda // 1000}.{cuda % 1000 // 10}"
    except Exception:  # no NVML: a CPU machine
        out["driver"] = None
    return out


def host() -> str:
    return socket.gethostname()
