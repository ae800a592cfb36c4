"""The scan, glue, rotary and matrix-product kernels build for sm_90 (H100/H200) on this machine, within the
SM's shared memory, and the decode-step, glue and matrix-product kernels do so without register spills (the
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
    assert len(rows) == 48, run.stdout
    assert "over the shared-memory limit" not in run.stdout
    for line in rows:
        regs, spill, smem, pdl = re.search(r"\s(\d+)\s+(\d+)\s+(\d+)\s+\d+\s+\d+\s+(\S.*)$", line).groups()
        regs, spill, smem = int(regs), int(spill), int(smem)
        assert regs <= 255 and smem <= 232448, line
        spill_free = line.startswith(("step", "add_rms_norm", "silu_mul", "gemv", "skinny", "mamba2_conv", "mamba3_pre",
                                      "ssd"))
        if spill_free or "state only" in line or "start states" in line:
            assert spill == 0, line
        # every decode kernel waits on the previous kernel before it writes anything or reads anything but
        # weights: nothing touches global memory before its griddepcontrol.wait, except the one-row
        # product's first weight tile and the conv step's weights and biases; the scans are launched plainly
        if line.startswith(("step", "add_rms_norm", "silu_mul", "rope", "decode_attention", "gemv M=8", "skinny",
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
    assert pdl_order("cp.async.bulk.prefetch.L2.global [%rd1], 8192;\n" + wait) == "ok"  # a hint: no write
    assert pdl_order("atom.global.add.f32 %f1, [%rd1], %f2;\n" + wait) == "writes before wait"
    assert pdl_order("st.global.b32 [%rd1], %r1;") == "no wait"


SASS = """
        Function : k
        /*0000*/                   MOV R1, c[0x0][0x28] ;                     /* 0x00000a0000017a02 */
        /*0010*/                   FMUL R2, R3, R4 ;                           /* 0x0000000403027220 */
        /*0020*/                   FFMA R2, R3, R4, R2 ;                       /* 0x0000000403027223 */
        /*0030*/                   SHFL.BFLY PT, R5, R2, 0x1, 0x1f ;           /* 0x0c201f0002057f89 */
        /*0040*/               @P0 BRA 0x10 ;                                  /* 0xffffffc000000947 */
        /*0050*/                   FADD R6, R5, R2 ;                           /* 0x0000000205067221 */
        /*0060*/                   EXIT ;                                      /* 0x000000000000794d */
        /*0070*/                   BRA 0x70;                                   /* 0xfffffffc00fc7947 */
"""


def test_sass_digest_reads_cuobjdump_text():
    """`sass_digest`: every instruction counted, the widest backward branch taken as the loop (a branch to
    itself is not one), its arithmetic and shuffles counted by base opcode, and the digest blind to the
    encodings beside the instructions but not to the instructions."""
    from kernels.compile_report import sass_digest

    d = sass_digest(SASS)
    assert (d.instructions, d.loop, dict(d.loop_mix)) == (8, 4, {"FFMA": 1, "FMUL": 1, "SHFL": 1})
    assert sass_digest(SASS.replace("0x0000000403027220", "0x1111111111111111")).digest == d.digest
    assert sass_digest(SASS.replace("FFMA R2, R3, R4, R2", "FFMA R2, R3, R5, R2")).digest != d.digest
    assert sass_digest(SASS.replace("@P0 BRA 0x10", "@P0 BRA 0x60")).loop == 0


@pytest.mark.skipif(not (BIN / "ptxas").exists() or not (BIN / "cuobjdump").exists(),
                    reason="this Triton install bundles no ptxas/cuobjdump")
def test_the_report_prints_machine_code_digests_for_the_configs_asked(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    run = subprocess.run([sys.executable, "-m", "kernels.compile_report", "--sass", "--only", "silu_mul"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = run.stdout.splitlines()[1:]
    assert len(rows) == 2 and rows[0].startswith("silu_mul"), run.stdout
    assert re.fullmatch(r"    sass [0-9a-f]{12}, \d+ instructions; (no loop|loop \d+: .*)", rows[1]), run.stdout
