"""Ahead-of-time build of the scan kernels for a GPU architecture, on any machine (no GPU needed):
registers per thread, spill stack, shared memory, per launch configuration.

Triton bundles ptxas and cuobjdump, so this catches kernels that would not compile, would spill, or
would ask for more shared memory than the SM has, before any device time is spent. Arguments are
specialised the way Triton's launcher does (16-byte aligned pointers and multiples of 16 marked
divisible, integers equal to 1 made constant), so the code matches what the GPU would run.

    python -m kernels.compile_report            # sm_90 (H100/H200), the default launch configs
    python -m kernels.compile_report --sweep    # also the configs `kernels.bench --sweep` tries
    python -m kernels.compile_report --sass --only step   # machine-code digests: did a change alter a build?

The build is this install's Triton's (named in the header); to predict the GPU machine's numbers, build
with its version. Versions differ: the batch-128 MIMO decode step takes 106 registers on Triton 3.7 and
128 on 3.6 (the device's count), and 3.6 and 3.7 lay out a tile of three or more dimensions differently
when two of them are equally contiguous (docs/benchmarks.md, "sixth session"; the kernels' tiles are 2-D).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import re
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from unittest import mock

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels import attention, fused, gemv, rope, skinny
from kernels.attention import H100_SMS
from kernels.bench import STEP_SWEEP_ROWS, STEP_SWEEP_WARPS
from kernels.bench_step_ab import patched
from kernels.mamba3 import chunk, segmented, ssd, step
from kernels.mamba3.testing import random_inputs, random_state
from kernels.mamba3.tl_utils import record_launches

_TRITON_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64",
                 torch.int64: "i64", torch.int32: "i32"}
SMEM_LIMIT_BYTES = {90: 232448, 80: 166912}  # opt-in shared memory per block


# the opcodes `sass_digest` counts in a loop: the arithmetic, the tensor-core products, the shuffles, and the
# shared-memory and spill traffic
LOOP_OPCODES = ("HGMMA", "HMMA", "FFMA", "FMUL", "FADD", "SHFL", "LDS", "STS", "LDL", "STL")
_SASS_LINE = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")


@dataclass(frozen=True)
class SassDigest:
    """What a build's machine code is, in brief: `digest` hashes its instructions (without addresses or encodings),
    so two builds with the same digest run the same code; `loop` counts the instructions of its longest loop (the
    widest backward branch; 0 without one), `loop_mix` the LOOP_OPCODES among them."""
    digest: str
    instructions: int
    loop: int
    loop_mix: tuple[tuple[str, int], ...]


def sass_digest(sass: str) -> SassDigest:
    """`SassDigest` of cuobjdump's `-sass` text."""
    code = [(int(m.group(1), 16), m.group(2)) for m in map(_SASS_LINE.match, sass.splitlines()) if m]
    ops = [re.sub(r"^@!?U?P\w+\s+", "", text).split()[0] for _, text in code]
    lo = hi = 0
    for (addr, text), op in zip(code, ops):
        target = re.search(r"\s(0x[0-9a-f]+)\b", text) if op.startswith("BRA") else None
        if target and int(target.group(1), 16) < addr and addr - int(target.group(1), 16) > hi - lo:
            lo, hi = int(target.group(1), 16), addr
    loop = [op.split(".")[0] for (addr, _), op in zip(code, ops) if hi and lo <= addr <= hi]
    mix = tuple((name, loop.count(name)) for name in LOOP_OPCODES if name in loop)
    digest = hashlib.sha1("\n".join(text for _, text in code).encode()).hexdigest()[:12]
    return SassDigest(digest, len(code), len(loop), mix)


@dataclass(frozen=True)
class Build:
    label: str
    registers: int
    spill_bytes: int
    shared_bytes: int
    num_warps: int
    num_stages: int
    pdl: str = "-"  # `pdl_order` of a kernel built with programmatic dependent launch
    sass: SassDigest | None = None  # with `build(..., sass=True)`


def pdl_order(ptx: str) -> str:
    """What a PDL kernel's PTX does before its first `griddepcontrol.wait`: "ok" (nothing touches global
    memory, an L2 prefetch aside: a hint that reads nothing into the kernel), "ok+N loads" (N global loads, no
    writes: only weights may be read there), "writes before wait" (a global store, atomic, reduction or async
    copy), or "no wait"."""
    i = ptx.find("griddepcontrol.wait")
    if i < 0:
        return "no wait"
    head = ptx[:i]
    if re.search(r"\b(st\.global|atom\.|red\.global|cp\.async(?!\.bulk\.prefetch))", head):  # a prefetch writes nothing
        return "writes before wait"
    loads = len(re.findall(r"\bld\.global", head))
    return f"ok+{loads} loads" if loads else "ok"


def _signature(fn, args, meta):
    sig, consts, attrs = {}, dict(meta), {}
    for i, (name, a) in enumerate(zip(fn.arg_names, args)):
        if torch.is_tensor(a):
            sig[name] = "*" + _TRITON_TYPES[a.dtype]
            if a.data_ptr() % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(a, bool):
            sig[name] = "i1"
        elif isinstance(a, int) and a == 1:
            sig[name], consts[name] = "constexpr", 1
        elif isinstance(a, int):
            sig[name] = "i32" if abs(a) < 2**31 else "i64"
            if a % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(a, float):
            sig[name] = "fp32"
        elif a is None:
            sig[name], consts[name] = "constexpr", None
        elif type(a).__name__ == "TensorDescriptor":  # a host TMA descriptor (triton.tools.tensor_descriptor)
            sig[name] = f"tensordesc<{_TRITON_TYPES[a.base.dtype]}{list(a.block_shape)}>"
        else:
            raise TypeError(f"cannot type argument {name}={a!r}")
    for name in meta:
        sig[name] = "constexpr"
    return sig, consts, attrs


def build(label: str, kernel, args, meta, arch: int = 90, sass: bool = False) -> Build:
    meta = dict(meta)
    if "PDL" in meta:  # recorded on the CPU: build what an sm_90+ GPU launches (programmatic dependent launch)
        meta["PDL"] = arch >= 90
        meta.pop("launch_pdl", None)
    options = {k: meta.pop(k) for k in ("num_warps", "num_stages", "maxnreg") if k in meta}
    sig, consts, attrs = _signature(kernel, args, meta)
    compiled = triton.compile(ASTSource(kernel, sig, constexprs=consts, attrs=attrs),
                              target=GPUTarget("cuda", arch, 32), options=options)
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True,
                               check=True).stdout
        code = subprocess.run([cuobjdump, "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout if sass else None
    m = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    return Build(label, int(m.group(1)), int(m.group(2)), compiled.metadata.shared,
                 compiled.metadata.num_warps, compiled.metadata.num_stages,
                 pdl_order(compiled.asm["ptx"]) if meta.get("PDL") else "-", sass_digest(code) if sass else None)


def recorded(call) -> list[tuple]:
    """The launches `call()` would make, as (kernel, grid, args, meta)."""
    with record_launches() as launches:
        call()
    return list(launches)


def default_cases(sweep: bool = False):
    """(label, call) pairs at the 1.5B head shapes (H 64, P 64, N 128, S 32), as the bench runs them,
    plus the fp32-I/O and Mamba-2 variants the GPU tests use, the glue, rotary and matrix-vector kernels."""
    H, P, N, S = 64, 64, 128, 32
    norm = dict(dt_bias=torch.zeros(H), B_norm_weight=torch.ones(N, dtype=torch.bfloat16),
                C_norm_weight=torch.ones(N, dtype=torch.bfloat16))
    for R in (1, 4):
        name = "SISO" if R == 1 else "MIMO R=4"
        kw = random_inputs(1, 64, H, P, N, S, R, dtype=torch.bfloat16)
        st = random_state(1, H, P, N, S, R, dtype=torch.bfloat16)
        kd = random_inputs(8, None, H, P, N, S, R, dtype=torch.bfloat16)
        params = {k: v for k, v in kd.items() if k not in ("x", "z", "B", "C", "dt", "adt", "lam", "theta")}
        proj = torch.randn(8, 2 * H * P + 2 * R * N + 3 * H + S, dtype=torch.bfloat16)

        def fresh(ssm_dtype=torch.float32, R=R):
            return random_state(8, H, P, N, S, R, dtype=torch.bfloat16, ssm_dtype=ssm_dtype)

        # tf32 at the scan's default tile; bf16 at the model prefill's (segmented.MODEL_DOT_ROWS rows a chunk)
        model_chunk = segmented.MODEL_DOT_ROWS // triton.next_power_of_2(R)
        yield f"chunk {name} dots=tf32", lambda kw=kw, st=st: chunk.scan_chunked(**kw, state=st)
        yield (f"chunk {name} dots=input, the model's chunk", lambda kw=kw, st=st, c=model_chunk: chunk.scan_chunked(
            **kw, state=st, dot_precision="input", chunk_size=c))
        # the segmented prefill's first pass, as the model's prefill runs it
        yield (f"chunk {name} state only dots=input (segmented prefill's first pass)",
               lambda kw=kw, c=model_chunk: chunk.scan_chunked(**kw, outputs=False, dot_precision="input",
                                                               chunk_size=c))
        local = random_state(3, H, P, N, S, R, dtype=torch.bfloat16)  # 4 segments of a batch-1 prompt
        yield (f"segmented {name} start states, one launch",
               lambda kw=kw, st=st, local=local: segmented.start_states_fused(
                   local, st, kw["dt"][:, :64].float(), kw["adt"][:, :64].float(), kw["lam"][:, :64].float(),
                   kw.get("mimo_x"), "interleaved" if R == 1 else "half", 4))
        for sd in (torch.float32, torch.bfloat16):
            yield (f"step {name} state={str(sd)[6:]}",
                   lambda kd=kd, sd=sd, fresh=fresh: step.step(**kd, state=fresh(sd)))
        yield (f"step_fused {name}",
               lambda proj=proj, params=params, fresh=fresh: step.step_fused(proj, **norm, **params,
                                                                            state=fresh()))
        for regime in ("few", "mid"):  # a CPU build takes the "many" defaults unless told (step.launch_regime)
            yield (f"step_fused {name}, {regime} programs per SM",
                   lambda proj=proj, params=params, fresh=fresh, regime=regime: step.step_fused(
                       proj, **norm, **params, state=fresh(), regime=regime))
        if R == 1:  # the 16-row tile SISO's fp32 state takes below ANGLE_ROWS_PROGRAMS_PER_SM (a CPU build: the 8)
            yield ("step_fused SISO, fp32 16-row tile (fewer programs)",
                   lambda proj=proj, params=params, fresh=fresh: step.step_fused(proj, **norm, **params, state=fresh(),
                                                                                block_p=16))
        deep = 3 if R > 1 else 4  # MIMO's fp32 default is 4 deep (the row above); 3 is its bf16 state's depth
        yield (f"step_fused {name}, state by TMA, {deep} stages",
               lambda proj=proj, params=params, fresh=fresh, deep=deep: step.step_fused(
                   proj, **norm, **params, state=fresh(), state_stages=deep))
        if R > 1:  # a knob that acts before the grid dependency wait
            def prefetched(proj=proj, params=params, fresh=fresh):
                with patched(True, "many", {"l2_prefetch": 8192}):
                    return step.step_fused(proj, **norm, **params, state=fresh())

            yield f"step_fused {name}, state prefetched into L2", prefetched
        if not sweep:
            continue
        r_pad = 1 if R == 1 else 4
        for rows, bp, w, ns in itertools.product((16, 32, 64), (16, 32, 64), (4, 8), (1, 2)):
            cfg = dict(chunk_size=max(1, rows // r_pad), block_p=bp, num_warps=w, num_stages=ns)
            yield (f"chunk {name} rows={rows} block_p={bp} warps={w} stages={ns}",
                   lambda kw=kw, st=st, cfg=cfg: chunk.scan_chunked(**kw, state=st, **cfg))
        for bp, w in itertools.product(STEP_SWEEP_ROWS, STEP_SWEEP_WARPS):
            yield (f"step {name} block_p={bp} warps={w}",
                   lambda kd=kd, fresh=fresh, bp=bp, w=w: step.step(**kd, state=fresh(), block_p=bp,
                                                                    num_warps=w, state_stages=0))
    k32 = random_inputs(1, 64, H, P, N, S, dtype=torch.float32)
    yield "chunk SISO fp32 I/O (exact dots)", lambda: chunk.scan_chunked(**k32)
    m2 = random_inputs(1, 64, H, P, N, S, dtype=torch.bfloat16, mamba2=True)
    yield "chunk Mamba-2 (S = 0)", lambda: chunk.scan_chunked(**m2)
    kss = random_inputs(1, 128, H, P, N, S, dtype=torch.bfloat16)
    sss = random_state(1, H, P, N, S, dtype=torch.bfloat16)
    yield "ssd SISO chunk-parallel (states, pass, outputs)", lambda: ssd.scan_ssd(**kss, state=sss)
    m2d = random_inputs(8, None, H, P, N, S, dtype=torch.bfloat16, mamba2=True)
    yield "step Mamba-2 (S = 0)", lambda: step.step(**m2d, state=random_state(8, H, P, N, 0))
    yield "step Mamba-2, no previous term (the model's)", lambda: step.step(
        **m2d, state=random_state(8, H, P, N, 0), previous_term=False)
    # the mixers' prologues at 1.5B widths: Mamba-2's decode conv step, Mamba-3's prefill preprocessing
    proj2, conv2 = torch.randn(8, 8512, dtype=torch.bfloat16), torch.randn(8, 4352, 4, dtype=torch.bfloat16)
    cw, cb = torch.randn(4352, 1, 4, dtype=torch.bfloat16), torch.randn(4352, dtype=torch.bfloat16)
    yield "mamba2_conv_step 1.5B", lambda: fused.mamba2_conv_step(
        proj2, conv2, cw, cb, torch.zeros(64), torch.zeros(64), xbc_offset=4096, dt_offset=8448)
    yield "mamba2_conv_prefill 1.5B", lambda: fused.mamba2_conv_prefill(
        proj2.view(2, 4, 8512), conv2[:2], cw, cb, torch.zeros(64), torch.zeros(64), xbc_offset=4096, dt_offset=8448)
    for rank, d_proj in ((1, 8672), (4, 9440)):
        yield f"mamba3_preprocess R={rank} 1.5B", lambda rank=rank, d_proj=d_proj: fused.mamba3_preprocess(
            torch.randn(64, d_proj, dtype=torch.bfloat16), dt_bias=torch.zeros(64),
            B_norm_weight=torch.ones(128, dtype=torch.bfloat16), C_norm_weight=torch.ones(128, dtype=torch.bfloat16),
            heads=64, headdim=64, d_state=128, rank=rank, n_angles=32)
    # the decode glue and the Transformer's fused rotary + cache write, at 1.5B / Llama-3.2-1B widths
    h, w = torch.randn(128, 2048), torch.ones(2048, dtype=torch.bfloat16)
    yield "add_rms_norm d=2048", lambda: fused.add_rms_norm(h, h.to(torch.bfloat16), w, 1e-5)
    u = torch.randn(128, 2 * 8192, dtype=torch.bfloat16)
    yield "silu_mul F=8192", lambda: fused.silu_mul(u[:, 8192:], u[:, :8192])
    q, kv = torch.randn(128, 32, 64, dtype=torch.bfloat16), torch.randn(128, 8, 64, dtype=torch.bfloat16)
    cache = torch.zeros(128, 8, 16, 64, dtype=torch.bfloat16)
    yield "rope_decode Llama-3.2-1B", lambda: rope.rope_decode_(q, kv, kv, cache, cache, torch.tensor(3),
                                                               torch.ones(32))
    qkv = torch.randn(2, 16, 48, 64, dtype=torch.bfloat16)
    for bt in (1, 32):
        yield f"rope_prefill Llama-3.2-1B, {bt}-token tiles", lambda bt=bt: rope.rope_prefill_(
            qkv[:, :, :32], qkv[:, :, 32:40], qkv[:, :, 40:], cache[:2], cache[:2], 0, torch.ones(32), block_t=bt)
    qa, ca = torch.randn(1, 32, 64, dtype=torch.bfloat16), torch.zeros(1, 8, 768, 64, dtype=torch.bfloat16)
    yield "decode_attention Llama-3.2-1B b=1 ctx=768", lambda: attention.decode_attention(qa, ca, ca, torch.tensor(3))
    qb, cb = torch.randn(128, 32, 64, dtype=torch.bfloat16), torch.zeros(128, 8, 768, 64, dtype=torch.bfloat16)
    yield ("decode_attention Llama-3.2-1B b=128 ctx=768 (one split)",
           lambda: attention.decode_attention(qb, cb, cb, torch.tensor(3)))
    # the decode matrix-vector product at the 1.5B in_proj (N 8672, K 2048), its GPU default config at 1 and 8 rows
    wg = torch.empty(8672, 2048, dtype=torch.bfloat16)
    for M in (1, 8):
        bn, bk, sk, nw = gemv.default_config(M, 8672, 2048, "cuda", sms=H100_SMS)
        yield (f"gemv M={M} in_proj {bn}x{bk} split={sk}",
               lambda xg=torch.empty(M, 2048, dtype=torch.bfloat16), cfg=(bn, bk, sk, nw): gemv.linear(
                   xg, wg, block_n=cfg[0], block_k=cfg[1], split_k=cfg[2], num_warps=cfg[3]))
    # one row with SwiGLU's SiLU·product folded in (gemv.SiluMul): fc2
    wf = torch.empty(2048, 4096, dtype=torch.bfloat16)
    uf = torch.empty(1, 8192, dtype=torch.bfloat16)
    bn, bk, sk, nw = gemv.default_config(1, 2048, 4096, "cuda", sms=H100_SMS)
    yield (f"gemv M=1 fc2 {bn}x{bk}, SiLU·product folded in",
           lambda: gemv.linear(gemv.SiluMul(uf[:, 4096:], uf[:, :4096]), wf, block_n=bn, block_k=bk, split_k=sk,
                               num_warps=nw))
    # and split in K (a second launch sums the splits): out_proj (N 2048, K 4096) at 8 rows
    wo = torch.empty(2048, 4096, dtype=torch.bfloat16)
    bn, bk, sk, nw = gemv.default_config(8, 2048, 4096, "cuda", sms=H100_SMS)
    yield (f"gemv M=8 out_proj {bn}x{bk} split={sk}",
           lambda: gemv.linear(torch.empty(8, 4096, dtype=torch.bfloat16), wo, block_n=bn, block_k=bk, split_k=sk,
                               num_warps=nw))
    # batch 128: the split-K product at its routed launch, its partials summed by the add + RMSNorm (skinny)
    cfg = skinny.ROUTED[(2048, 4096)]
    xs = torch.empty(128, 4096, dtype=torch.bfloat16)
    yield (f"skinny M=128 out_proj {cfg.block_n}x{cfg.block_k} split={cfg.split_k} stages={cfg.stages} "
           f"warps={cfg.num_warps}, TMA", lambda: skinny.partials(xs, wo, config=cfg, tma=True))
    hs = torch.empty(128, 2048)
    yield (f"add_rms_norm d=2048, {cfg.split_k} split partials",
           lambda: fused.add_rms_norm(hs, skinny.SplitPartials(torch.empty(cfg.split_k, 128, 2048), (128, 2048),
                                                                torch.bfloat16), w, 1e-5))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability ×10 (90 = H100/H200)")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--sass", action="store_true",
                    help="also each build's machine-code digest and its longest loop's instruction mix (`sass_digest`)")
    ap.add_argument("--only", metavar="TEXT", help="only the configs whose label contains TEXT")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the interpreter builds nothing", file=sys.stderr)
        return 2
    limit = SMEM_LIMIT_BYTES.get(args.arch)
    head = f"kernel / config (triton {triton.__version__}, sm_{args.arch})"
    print(f"{head:58s} {'regs':>5s} {'spill B':>8s} {'smem B':>8s} warps stages  PDL: before the wait")
    # launches are recorded on this machine, where TMA counts as available: before sm_90 the step feeds its
    # state by pointer loads, so record it that way
    no_tma = mock.patch.object(step, "_tma_can_take", lambda ssm: False) if args.arch < 90 else nullcontext()
    with no_tma:
        for label, call in default_cases(args.sweep):
            if (args.arch < 90 and "by TMA" in label) or (args.only and args.only not in label):
                continue
            for kernel, _, kargs, meta in recorded(call):
                b = build(label, kernel, kargs, meta, args.arch, sass=args.sass)
                flag = "  over the shared-memory limit" if limit and b.shared_bytes > limit else ""
                print(f"{b.label:58s} {b.registers:5d} {b.spill_bytes:8d} {b.shared_bytes:8d} "
                      f"{b.num_warps:5d} {b.num_stages:6d}  {b.pdl}{flag}")
                if b.sass:
                    mix = " ".join(f"{name} {count}" for name, count in b.sass.loop_mix)
                    loop = f"loop {b.sass.loop}: {mix}" if b.sass.loop else "no loop"
                    print(f"    sass {b.sass.digest}, {b.sass.instructions} instructions; {loop}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
