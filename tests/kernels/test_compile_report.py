"""The scan, glue, rotary and matrix-vector kernels build for sm_90 (H100/H200) on this machine, within the
SM's shared memory, and the decode-step, glue and matrix-vector kernels do so without register spills (the
rotary kernel's small stack is libdevice's large-angle reduction of cos/sin, taken only for huge angles)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


@pytest.mark.skipif(not (BIN / "ptxas").exists() or not (BIN / "cuobjdump").exists(),
                    reason="this Triton install bundles no ptxas/cuobjdump")
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the GPU tests build and run the kernels")
def test_kernels_build_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    run = subprocess.run([sys.executable, "-m", "kernels.compile_report", "--arch", "90"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [ln for ln in run.stdout.splitlines()[1:] if ln.strip()]
    assert len(rows) == 22, run.stdout
    assert "over the shared-memory limit" not in run.stdout
    for line in rows:
        regs, spill, smem = map(int, re.search(r"\s(\d+)\s+(\d+)\s+(\d+)\s+\d+\s+\d+$", line).groups())
        assert regs <= 255 and smem <= 232448, line
        spill_free = line.startswith(("step", "add_rms_norm", "silu_mul", "gemv"))
        if spill_free or "state only" in line or "start states" in line:
            assert spill == 0, line
