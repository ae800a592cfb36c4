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
    assert len(rows) == 43, run.stdout
    assert "over the shared-memory limit" not in run.stdout
    for line in rows:
        regs, spill, smem, pdl = re.search(r"\s(\d+)\s+(\d+)\s+(\d+)\s+\d+\s+\d+\s+(\S.*)$", line).groups()
        regs, spill, smem = int(regs), int(spill), int(smem)
        assert regs <= 255 and smem <= 232448, line
        spill_free = line.startswith(("step", "add_rms_norm", "silu_mul", "gemv", "mamba2_conv", "mamba3_pre", "ssd"))
        if spill_free or "state only" in line or "start states" in line:
            assert spill == 0, line
        # every decode kernel waits on the previous kernel before it writes anything or reads anything but
        # weights: nothing touches global memory before its griddepcontrol.wait, except the one-row
        # product's first weight tile and the conv step's weights and biases; the scans are launched plainly
        if line.startswith(("step", "add_rms_norm", "silu_mul", "rope", "decode_attention", "gemv M=8",
                            "mamba3_pre")):
            assert pdl == "ok", line
        elif line.startswith(("gemv M=1", "mamba2_conv")):
            assert re.fullmatch(r"ok\+\d+ loads", pdl), line
        else:
            assert pdl == "-", line


def test_pdl_order_reads_the_ptx_before_the_first_wait():
    from kernels.compile_report import pdl_order

    wait = "griddepcontrol.wait;\n"
    assert pdl_order("mov.u32 %r1, 0;\n" + wait + "st.global.b32 [%rd1], %r1;") == "ok"
    assert pdl_order("ld.global.v4.b32 {%r1}, [%rd2];\nld.global.b16 %rs1, [%rd3];\n" + wait) == "ok+2 loads"
    assert pdl_order("st.global.b32 [%rd1], %r1;\n" + wait) == "writes before wait"
    assert pdl_order("cp.async.cg.shared.global [%r1], [%rd1], 16;\n" + wait) == "writes before wait"
    assert pdl_order("atom.global.add.f32 %f1, [%rd1], %f2;\n" + wait) == "writes before wait"
    assert pdl_order("st.global.b32 [%rd1], %r1;") == "no wait"
