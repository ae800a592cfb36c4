"""How far a whole Mamba-3 model's logits drift when its SSM state is stored in bf16 instead of fp32.

The same model is built twice from one seed, once per state dtype (`Mamba3Config.state_dtype`), both
caches are filled by the same prompt, and both decode the same token stream, teacher-forced (no
sampling, so the two runs see identical inputs and any difference is the state's rounding). At
checkpoints it records the relative error of the logits ‖l_bf16 − l_fp32‖ / ‖l_fp32‖ per sequence (median,
p95 and max over the batch; mean and max over every step so far) and the share of positions whose top-1
token agrees.

    python -m kernels.state_drift --preset mamba3-siso-180m --steps 4096 --batch 4
    python -m kernels.state_drift --device cuda --dtype bfloat16 --out drift.json

On the CPU the weights are fp32 by default: the question is the state's rounding, and fp32 weights keep
every other rounding out of it (bf16 matmuls on a CPU are also slow); on CUDA the model runs as served,
bf16 weights on the Triton path. Weights are the spec's random initialisation, not a trained
checkpoint: a trained model's state magnitudes and logit margins differ, so read the numbers as the
size of the effect on this architecture, not as a quality loss.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time

import torch

from model.config import get_config
from model.factory import build_model

CHECKPOINTS = (1, 16, 64, 256, 1024, 2048, 4096)


def _build(preset: str, state_dtype: str, *, device, dtype, impl, seed):
    cfg = dataclasses.replace(get_config(preset), state_dtype=state_dtype)
    return build_model(cfg, device=device, dtype=dtype, impl=impl, seed=seed)


def drift(preset: str, *, steps: int, batch: int = 4, prompt: int = 512, device="cpu",
          dtype: torch.dtype = torch.float32, impl: str | None = None, seed: int = 0,
          checkpoints=CHECKPOINTS, reference_state: str = "float32", test_state: str = "bfloat16",
          on_row=None) -> list[dict]:
    """One row per checkpoint step (those ≤ steps, and `steps` itself): step, rel_median, rel_p95,
    rel_max (over the batch at that step), rel_mean_so_far and rel_max_so_far (over every sequence and
    step so far), top1_agree_so_far (0–1). `on_row(row)` is called as each is reached (progress of a
    long run)."""
    impl = impl or ("triton" if torch.device(device).type == "cuda" else "chunked")
    models = [_build(preset, sd, device=device, dtype=dtype, impl=impl, seed=seed)
              for sd in (reference_state, test_state)]
    vocab = models[0].config.vocab_size
    g = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(0, vocab, (batch, prompt + steps), generator=g).to(device)
    caches = [m.allocate_cache(batch=batch, max_context=prompt + steps) for m in models]
    if prompt:
        for m, c in zip(models, caches):
            m.prefill(tokens[:, :prompt], c)
    marks = {c for c in checkpoints if c <= steps} | {steps}
    rows, worst, total, agree = [], 0.0, 0.0, 0
    for t in range(1, steps + 1):
        tok = tokens[:, prompt + t - 1]
        ref, test = (m.decode_step(tok, c).double() for m, c in zip(models, caches))
        rel = (test - ref).norm(dim=-1) / ref.norm(dim=-1)
        worst = max(worst, rel.max().item())
        total += rel.sum().item()
        agree += int((test.argmax(-1) == ref.argmax(-1)).sum())
        if t in marks:
            rows.append(dict(step=t, rel_median=rel.median().item(), rel_p95=rel.quantile(0.95).item(),
                             rel_max=rel.max().item(), rel_mean_so_far=total / (t * batch),
                             rel_max_so_far=worst, top1_agree_so_far=agree / (t * batch)))
            if on_row is not None:
                on_row(rows[-1])
    return rows


def _cpu_name() -> str:
    """The `model name` lscpu shows (platform.processor() is empty on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", nargs="+", default=["mamba3-siso-180m", "mamba3-mimo-180m"])
    ap.add_argument("--steps", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens prefilled first (0: start empty)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="model dtype (default: float32 on cpu, bfloat16 on cuda)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the rows here as JSON")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.prompt < 0:
        ap.error("--steps and --batch must be ≥ 1, --prompt ≥ 0")
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else _cpu_name()
    print(f"bf16 vs fp32 SSM state, teacher-forced decode; {where}; model dtype {dtype}; random-init weights "
          f"(no trained checkpoint); batch {args.batch}, prompt {args.prompt}, seed {args.seed}")
    print(f"{'preset':18s} {'step':>5s} {'median':>9s} {'p95':>9s} {'max':>9s} {'mean so far':>11s} "
          f"{'max so far':>10s} {'top-1 agree':>11s}")
    out = {}
    for preset in args.preset:
        t0 = time.monotonic()
        def show(r, preset=preset):
            print(f"{preset:18s} {r['step']:5d} {r['rel_median']:9.2e} {r['rel_p95']:9.2e} {r['rel_max']:9.2e} "
                  f"{r['rel_mean_so_far']:11.2e} {r['rel_max_so_far']:10.2e} {r['top1_agree_so_far']:11.4f}",
                  flush=True)

        rows = drift(preset, steps=args.steps, batch=args.batch, prompt=args.prompt, device=args.device,
                     dtype=dtype, seed=args.seed, on_row=show)
        out[preset] = dict(rows=rows, seconds=time.monotonic() - t0)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(device=where, dtype=str(dtype), batch=args.batch, prompt=args.prompt, seed=args.seed,
                           steps=args.steps, presets=out), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
