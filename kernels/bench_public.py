"""Ours against the public Mamba-3 SISO Triton kernels, one layer at the 1.5B head shapes, same run (CUDA only).

The public kernels are state-spaces/mamba's `mamba_ssm.ops.triton.mamba3`: `mamba3_siso_combined` (prefill:
the cumulative angles, then the chunked forward) and `mamba3_siso_step` (decode). They are not a dependency
and nothing here fetches or installs them: put a checkout's `mamba_ssm` on PYTHONPATH. Their Triton kernels
need only torch, triton and einops, but importing `mamba_ssm` itself loads its CUDA extensions, so a folder
holding `mamba_ssm/ops/triton/mamba3/` with empty `__init__.py` files above it is enough.

Both sides get the same raw inputs: the public API takes λ before its sigmoid and θ before its tanh, and casts
both to bf16, so our inputs are rounded through those bf16 raw values first (the public kernels then take the
tanh with PTX's approximation, so their θ may differ from ours in the last bits). Speed is GPU time per call
replayed from a CUDA graph; accuracy is the p95 relative error (spec §7.10) against the float64 chunked
reference, for the output, the final state, the cached key, and the largest wrapped angle error.

    python -m kernels.bench_public                 # prefill 128 × 512, 1 × 16384, 1 × 2048; decode b 1, 128
    python -m kernels.bench_public --full-autotune # let the public forward try all 27 of its configs

By default the public forward's autotuning is narrowed to its 12 configurations with 4 or 8 warps and no or a
128-register cap (2 warps and the 256 cap left out), which bounds the compile time of a run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from types import SimpleNamespace

import torch
from torch import Tensor

from kernels.bench import H, N, P, S, _floor_ms, measure_bf16_flop_per_s, measure_copy_bytes_per_s, prefill_cost
from kernels.bench import step_cost, time_graph_ms
from kernels.mamba3 import reference as ref
from kernels.mamba3.reference import ScanState
from kernels.mamba3.testing import angle_err, random_inputs, random_state, rel_p95, upcast

PREFILL_CASES = ((128, 512), (1, 16384), (1, 2048))
STEP_BATCHES = (1, 128)
ACCURACY_CASES = ((8, 512), (1, 4096))
_MODULES = ("mamba3_siso_combined", "mamba3_siso_step", "mamba3_siso_fwd")


def public_kernels() -> SimpleNamespace | None:
    """The public SISO entry points and forward module; None when there is no `mamba_ssm` on the path. A
    `mamba_ssm` that is there but does not import (a missing dependency, an API this Triton lacks) raises
    RuntimeError with the reason."""
    try:
        mods = {m: importlib.import_module(f"mamba_ssm.ops.triton.mamba3.{m}") for m in _MODULES}
    except ModuleNotFoundError as e:
        if e.name is not None and e.name.split(".")[0] == "mamba_ssm":
            return None
        raise RuntimeError(f"mamba_ssm's Triton Mamba-3 kernels are on the path but do not import: {e}") from e
    except Exception as e:  # noqa: BLE001 - anything else a broken install raises, named
        raise RuntimeError(f"mamba_ssm's Triton Mamba-3 kernels are on the path but do not import: {e!r}") from e
    return SimpleNamespace(prefill=mods["mamba3_siso_combined"].mamba3_siso_combined,
                           step=mods["mamba3_siso_step"].mamba3_siso_step,
                           forward_kernel=mods["mamba3_siso_fwd"].mamba3_siso_fwd_kernel)


def narrow_autotune(pub: SimpleNamespace) -> int:
    """Keep the public forward's configurations with 4 or 8 warps and no or a 128-register cap; returns how
    many are left."""
    k = pub.forward_kernel
    k.configs = [c for c in k.configs if c.num_warps in (4, 8) and c.maxnreg in (None, 128)]
    return len(k.configs)


def matched_inputs(batch: int, seqlen: int | None, *, device="cuda", seed: int = 0) -> tuple[dict, Tensor, Tensor]:
    """Our seeded bf16 inputs (`random_inputs`, SISO, 1.5B head shapes) with λ and θ rounded through the
    public API's raw bf16 inputs; returns (our keyword arguments, trap = logit λ in bf16, u = atanh(θ/π) in
    bf16), so that λ = sigmoid(trap) and θ = π·tanh(u) exactly."""
    kw = random_inputs(batch, seqlen, H, P, N, S, device=device, dtype=torch.bfloat16, seed=seed)
    trap = torch.logit(kw["lam"]).to(torch.bfloat16)
    u = torch.atanh((kw["theta"] / math.pi).clamp(-1 + 1e-6, 1 - 1e-6)).to(torch.bfloat16)
    kw["lam"] = torch.sigmoid(trap.float())
    kw["theta"] = math.pi * torch.tanh(u.float())
    return kw, trap, u


def public_prefill_args(kw: dict, trap: Tensor, u: Tensor) -> dict:
    """`mamba3_siso_combined`'s arguments for our prefill inputs: C and B are its Q and K (one group), its
    scalars are head-major, and its angle rates are per head."""
    b, T = kw["x"].shape[:2]
    head_major = {k: v.transpose(1, 2).contiguous() for k, v in (("ADT", kw["adt"]), ("DT", kw["dt"]),
                                                                 ("Trap", trap))}
    return dict(Q=kw["C"][:, :, 0], K=kw["B"][:, :, 0], V=kw["x"], **head_major,
                Q_bias=kw["C_bias"][:, 0].contiguous(), K_bias=kw["B_bias"][:, 0].contiguous(),
                Angles=u[:, :, None, :].expand(b, T, H, S).contiguous(), D=kw["D"], Z=kw["z"])


def public_step_args(kw: dict, trap: Tensor, u: Tensor, state: ScanState) -> dict:
    """`mamba3_siso_step`'s arguments for our decode-step inputs and cache (its cache is read, not written)."""
    b = kw["x"].shape[0]
    return dict(Q=kw["C"][:, 0], K=kw["B"][:, 0], V=kw["x"], ADT=kw["adt"], DT=kw["dt"], Trap=trap,
                Q_bias=kw["C_bias"][:, 0].contiguous(), K_bias=kw["B_bias"][:, 0].contiguous(),
                Angles=u[:, None, :].expand(b, H, S).contiguous(), D=kw["D"], Z=kw["z"],
                Input_States=(state.angle, state.ssm, state.k[:, 0], state.x))


def accuracy(pub: SimpleNamespace, batch: int, seqlen: int) -> list[dict]:
    """p95 relative errors against the float64 chunked reference: ours with tf32 dots, ours with bf16 dots (the
    model's since `segmented._MODEL_DOTS`), and the public prefill."""
    from kernels.mamba3.chunk import scan_chunked

    kw, trap, u = matched_inputs(batch, seqlen, seed=1)
    want_o, want = ref.scan_chunked(**upcast(kw), chunk_size=64)
    runs = {"ours, tf32 dots": lambda: scan_chunked(**kw),
            "ours, bf16 dots": lambda: scan_chunked(**kw, dot_precision="input"),
            "public": lambda: pub.prefill(**public_prefill_args(kw, trap, u), chunk_size=64,
                                          return_final_states=True)}
    rows = []
    for name, run in runs.items():
        res = run()
        if name == "public":
            o, angle, ssm, k, _ = res
        else:
            o, st = res
            angle, ssm, k = st.angle, st.ssm, st.k[:, 0]
        rows.append(dict(case=f"{batch}x{seqlen}", who=name, output=rel_p95(o, want_o), state=rel_p95(ssm, want.ssm),
                         key=rel_p95(k, want.k[:, 0]), angle=angle_err(angle, want.angle)))
    return rows


def prefill_row(pub: SimpleNamespace, batch: int, seqlen: int, bw: float, rate: float) -> dict:
    """One layer's prefill: ours as the model runs it (`segmented.prefill`: bf16 dots for SISO, segments where
    they pay) and the public one, each from a CUDA graph."""
    from kernels.mamba3.chunk import default_tile
    from kernels.mamba3.segmented import prefill

    kw, trap, u = matched_inputs(batch, seqlen)
    pa = public_prefill_args(kw, trap, u)
    out = torch.empty_like(kw["x"])
    fin = ScanState.zeros(batch, H, P, N, S, 1, device="cuda")
    ours = time_graph_ms(lambda: prefill(**kw, out=out, final_state=fin), calls=3)
    public = time_graph_ms(lambda: pub.prefill(**pa, chunk_size=64, return_final_states=True), calls=3)
    nbytes, flops = prefill_cost(batch, seqlen, 1, default_tile(batch, H, P, 1, "cuda", S)[0])
    return dict(what="prefill scan", case=f"{batch}x{seqlen}", ours_ms=ours, public_ms=public,
                floor_ms=_floor_ms(nbytes, flops, bw, rate))


def step_row(pub: SimpleNamespace, batch: int, bw: float, rate: float) -> dict:
    """One layer's decode step from the same inputs and cache (fp32 state), ours (`step.step`, in place) and
    the public one (new output tensors), each from a CUDA graph, with their outputs' p95 relative difference."""
    from kernels.mamba3.step import step

    kw, trap, u = matched_inputs(batch, None)
    state = random_state(batch, H, P, N, S, device="cuda", dtype=torch.bfloat16)
    pa = public_step_args(kw, trap, u, ScanState(*(t.clone() for t in state)))
    mine = ScanState(*(t.clone() for t in state))
    diff = rel_p95(pub.step(**pa)[0], step(**kw, state=mine))
    ours = time_graph_ms(lambda: step(**kw, state=state))
    public = time_graph_ms(lambda: pub.step(**pa))
    nbytes, flops = step_cost(batch, 1, 4, fused=False)
    return dict(what="decode step", case=f"b={batch}", ours_ms=ours, public_ms=public,
                floor_ms=_floor_ms(nbytes, flops, bw, rate), output_p95_diff=diff)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full-autotune", action="store_true", help="all 27 public forward configs")
    ap.add_argument("--json", help="also write the JSON record to this file")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("kernels.bench_public needs a CUDA GPU", file=sys.stderr)
        return 2
    try:
        pub = public_kernels()
    except RuntimeError as e:
        print(f"kernels.bench_public: {e}", file=sys.stderr)
        return 2
    if pub is None:
        print("kernels.bench_public: mamba_ssm.ops.triton.mamba3 is not importable; put a state-spaces/mamba "
              "checkout's mamba_ssm on PYTHONPATH (see this module's docstring)", file=sys.stderr)
        return 2
    configs = len(pub.forward_kernel.configs) if args.full_autotune else narrow_autotune(pub)
    torch.backends.cuda.matmul.allow_tf32 = False
    bw, rate = measure_copy_bytes_per_s(), measure_bf16_flop_per_s()
    dev = torch.cuda.get_device_name()
    print(f"{dev}: copy {bw / 1e12:.2f} TB/s, bf16 matmul {rate / 1e12:.0f} TFLOP/s; public forward autotuned "
          f"over {configs} configs")
    acc = [r for b, T in ACCURACY_CASES for r in accuracy(pub, b, T)]
    print("\naccuracy vs the float64 chunked reference (p95 relative error; angle: largest wrapped error, rad)")
    print(f"{'case':10s} {'who':16s} {'output':>9s} {'state':>9s} {'key':>9s} {'angle':>9s}")
    for r in acc:
        print(f"{r['case']:10s} {r['who']:16s} {r['output']:9.2e} {r['state']:9.2e} {r['key']:9.2e} {r['angle']:9.1e}")
    rows = ([prefill_row(pub, b, T, bw, rate) for b, T in PREFILL_CASES]
            + [step_row(pub, b, bw, rate) for b in STEP_BATCHES])
    print(f"\n{'what':14s} {'case':10s} {'ours us':>9s} {'public us':>9s} {'public/ours':>11s} {'floor us':>9s} "
          f"{'frac ours':>9s}")
    for r in rows:
        print(f"{r['what']:14s} {r['case']:10s} {r['ours_ms'] * 1e3:9.1f} {r['public_ms'] * 1e3:9.1f} "
              f"{r['public_ms'] / r['ours_ms']:10.2f}x {r['floor_ms'] * 1e3:9.1f} {r['floor_ms'] / r['ours_ms']:9.2f}"
              + (f"  outputs differ by {r['output_p95_diff']:.1e} (p95)" if "output_p95_diff" in r else ""))
    record = dict(device=dev, torch=torch.__version__, copy_bytes_per_s=bw, bf16_flop_per_s=rate,
                  public_configs=configs, accuracy=acc, rows=rows)
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(record) + "\n")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
