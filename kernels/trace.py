"""Where the time of one whole-model step goes (CUDA only): every GPU kernel of a decode step or a prefill,
grouped by name, with its share of the step, and the matrix products' effective weight bandwidth.

The step runs eagerly under the PyTorch profiler (CUPTI kernel records), launched without programmatic
dependent launch, so each kernel's GPU time is its own (with PDL a kernel can start early and its record
would include waiting on the one before); the same step replayed from a CUDA graph, as the model runs it
(with PDL on sm_90+), is timed alongside. The difference between that and the sum of kernel times is
what the launches and the gaps between kernels cost inside the graph, net of the overlap PDL buys.

    python -m kernels.trace --model mamba3-siso-1.5b --batch 1 --context 768
    python -m kernels.trace --model mamba3-siso-1.5b --prefill 128 512
    python -m kernels.trace --ops      # each scan kernel alone once (a target for Nsight Compute's -k)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict

import torch

from kernels.mamba3.tl_utils import without_pdl
from model import cost
from model.factory import build_model

MATMUL = re.compile(r"gemm|gemv|skinny|nvjet|xmma|cutlass|splitK|sm90_|sm80_|ampere_|Kernel2", re.I)


def _kernel_times(fn, steps: int) -> dict[str, tuple[float, int]]:
    """{kernel name: (total GPU µs over `steps` calls, count)} from CUPTI records."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    out: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA or "memcpy" in e.name.lower():
            continue
        t = getattr(e, "device_time", None)
        t = e.cuda_time if t is None else t
        out[e.name][0] += t
        out[e.name][1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def _short(name: str, width: int = 64) -> str:
    name = re.sub(r"\s+", " ", name)
    return name if len(name) <= width else name[: width - 1] + "…"


def trace(model_name: str, batch: int, context: int, prefill: tuple[int, int] | None, steps: int) -> dict:
    from kernels.bench_model import _randomise, time_decode_ms, time_prefill_ms

    model = build_model(model_name, device="cuda", dtype=torch.bfloat16, impl="triton", seed=0)
    cfg = model.config
    if prefill:
        b, T = prefill
        cache = model.allocate_cache(batch=b, max_context=T)
        tokens = torch.randint(0, cfg.vocab_size, (b, T), device="cuda")

        def call():
            cache.pos.zero_()
            model.prefill(tokens, cache)
        whole_ms = time_prefill_ms(model, b, T, graph=False)[0]  # launched from Python: the host's time shows
        what = f"prefill {b}x{T} (eager)"
    else:
        cache = model.allocate_cache(batch=batch, max_context=context + 1)
        _randomise(cache)
        token = torch.randint(0, cfg.vocab_size, (batch,), device="cuda")

        def call():
            cache.pos.fill_(context)
            model.decode_step(token, cache)
        whole_ms = time_decode_ms(model, batch, context)
        what = f"decode b={batch} ctx={context} (graph replay)"
    with without_pdl():
        times = _kernel_times(call, steps)
    total_us = sum(t for t, _ in times.values()) / steps
    mm_us = sum(t for k, (t, _) in times.items() if MATMUL.search(k)) / steps
    weights = cost.weight_bytes(cfg)
    rows = sorted(times.items(), key=lambda kv: -kv[1][0])
    print(f"{model_name}, {what}: {whole_ms:.3f} ms per step; kernels sum to {total_us / 1e3:.3f} ms "
          f"(gaps/launch {whole_ms - total_us / 1e3:+.3f} ms); {sum(c for _, c in times.values()) // steps} "
          f"kernels per step")
    print(f"matrix products: {mm_us / 1e3:.3f} ms = {weights / (mm_us * 1e-6) / 1e12:.2f} TB/s over "
          f"{weights / 2**30:.2f} GiB of weights (bf16)")
    print(f"{'kernel':64s} {'per step':>8s} {'us/call':>8s} {'us/step':>9s} {'share':>6s}")
    for name, (t, c) in rows[:25]:
        print(f"{_short(name):64s} {c / steps:8.1f} {t / c:8.2f} {t / steps:9.1f} {t / steps / total_us:6.1%}")
    return dict(model=model_name, what=what, whole_ms=whole_ms, kernels_ms=total_us / 1e3, matmul_ms=mm_us / 1e3,
                weight_bytes=weights, kernels=[dict(name=k, per_step=c / steps, us_per_step=t / steps)
                                               for k, (t, c) in rows])


def run_ops() -> None:
    """Each scan kernel once at the issue's shapes, for `ncu -k regex:...`."""
    from kernels.mamba3.chunk import scan_chunked
    from kernels.mamba3.reference import ScanState
    from kernels.mamba3.step import step
    from kernels.mamba3.testing import random_inputs, random_state

    H, P, N, S = 64, 64, 128, 32
    for b, T, R in ((128, 512, 1), (1, 16384, 1), (128, 512, 4)):
        kw = random_inputs(b, T, H, P, N, S, R, device="cuda", dtype=torch.bfloat16)
        fin = ScanState.zeros(b, H, P, N, S, R, device="cuda")
        torch.cuda.nvtx.range_push(f"chunk b={b} T={T} R={R}")
        scan_chunked(**kw, final_state=fin)
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_pop()
    for R in (1, 4):
        kw = random_inputs(128, None, H, P, N, S, R, device="cuda", dtype=torch.bfloat16)
        st = random_state(128, H, P, N, S, R, device="cuda", dtype=torch.bfloat16)
        step(**kw, state=st)
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", nargs="+", default=["mamba3-siso-1.5b"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--context", type=int, default=768)
    ap.add_argument("--prefill", nargs=2, type=int, metavar=("BATCH", "PROMPT"))
    ap.add_argument("--steps", type=int, default=5, help="steps profiled (times are per step)")
    ap.add_argument("--ops", action="store_true", help="run each scan kernel once and exit")
    ap.add_argument("--json", help="also write the breakdowns here")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("kernels.trace needs a CUDA GPU", file=sys.stderr)
        return 2
    if args.ops:
        run_ops()
        return 0
    out = [trace(m, args.batch, args.context, tuple(args.prefill) if args.prefill else None, args.steps)
           for m in args.model]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
