"""A/B of the prefill's knobs on one whole model (CUDA only): each variant's prefill replayed from a CUDA graph
(`kernels.bench_model.time_prefill_ms`, the fastest of `--repeats`) at every `--shape`, the defaults timed
first and again last, in one run; and each variant's last-token logits of a 4 × 512 prefill against the
defaults' (relative by norm; random weights, so a distance, not an accuracy).

    python -m kernels.bench_prefill_ab --model mamba3-mimo-1.5b --shape 128 512 --variant "mimo:num_warps=8"
    python -m kernels.bench_prefill_ab --model mamba2-1.5b --variant "conv_tile=(16,128)" --variant rank1:chunk_size=16
    python -m kernels.bench_prefill_ab --model llama-3.2-1b --shape 1 2048 --shape 128 512 --variant rope_block_t=1
    python -m kernels.bench_prefill_ab --model mamba3-mimo-1.5b --layer --shape 16 2048 --variant "mimo:p_major=False"

With `--layer`, one layer's scan instead of the whole model: `segmented.prefill` on seeded random inputs at the
model's head shapes (bf16, as its prefill calls it: segmented where the model's would be, Mamba-2 without biases),
timed by `kernels.bench.time_graph_ms`, its outputs (not logits) against the defaults' at the first shape.

A variant is `knob=value[; knob=value…]`, values as Python literals. Knobs:
- `rank1:<keyword>`, `mimo:<keyword>`: a `scan_chunked` keyword (chunk_size, block_p, num_warps, dot_precision,
  …) that every rank-1 or MIMO scan of the model's prefill takes as if its caller named it
  (`segmented.scan_keywords`; the model's own defaults then fill in the rest, `segmented._with_model_dots`);
- `dots`: "tf32" or "input" (`segmented.model_dots`);
- `conv_tile`: Mamba-2's prefill conv tile, (tokens, channels) (`kernels.fused.MAMBA2_CONV_PREFILL_TILE`);
- `rope_block_t`: tokens a prefill rotary program takes (`kernels.rope.ROPE_PREFILL_BLOCK_T`);
- `residual_product`: True or False, whether each branch's last product is left to the next pre-norm, which runs
  it with the residual stream added in its epilogue (`model.layers.residual_product`; False: the branch output
  written and added by the norm kernel, `model.layers.residual_add_apart`).
"""

from __future__ import annotations

import argparse
import contextlib

import torch

KNOBS = ("dots", "conv_tile", "rope_block_t", "residual_product")
RANKS = ("rank1", "mimo")


def parse_variant(text: str) -> dict:
    """`knob=value; …` → {knob: value} (scan keywords as "rank1:name" / "mimo:name"; conv_tile a pair of positive
    integers, rope_block_t an integer, dots "tf32" or "input", residual_product True or False); ValueError
    otherwise."""
    from kernels.bench import parse_assignments
    from kernels.mamba3.chunk import check_dot_precision

    def accepts(name: str) -> bool:
        rank, colon, keyword = name.partition(":")
        return name in KNOBS or bool(colon and rank in RANKS and keyword.isidentifier())

    out = parse_assignments(text, ";", accepts, f"knob=value, a knob from {', '.join(KNOBS)} or "
                            "rank1:<scan keyword> / mimo:<scan keyword>", "knob=value")
    tile = out.get("conv_tile", (1, 1))
    if not (isinstance(tile, (tuple, list)) and len(tile) == 2 and all(type(v) is int and v > 0 for v in tile)):
        raise ValueError(f"{text!r}: conv_tile takes (tokens, channels), two positive integers, got {tile!r}")
    if type(out.get("rope_block_t", 1)) is not int:
        raise ValueError(f"{text!r}: rope_block_t takes an integer, got {out['rope_block_t']!r}")
    if type(out.get("residual_product", True)) is not bool:
        raise ValueError(f"{text!r}: residual_product takes True or False, got {out['residual_product']!r}")
    if "dots" in out:
        check_dot_precision(out["dots"])
    return out


@contextlib.contextmanager
def applied(variant: dict):
    """The module switches `variant` names, set inside the block and put back after (on an error too)."""
    from kernels import fused, rope
    from kernels.mamba3 import segmented
    from model.layers import residual_add_apart

    scan = {rank: {k.partition(":")[2]: v for k, v in variant.items() if k.startswith(rank + ":")} for rank in RANKS}
    saved = fused.MAMBA2_CONV_PREFILL_TILE, rope.ROPE_PREFILL_BLOCK_T
    with contextlib.ExitStack() as stack:
        stack.enter_context(segmented.scan_keywords(**scan))
        if "dots" in variant:
            stack.enter_context(segmented.model_dots(variant["dots"]))
        if not variant.get("residual_product", True):
            stack.enter_context(residual_add_apart())
        fused.MAMBA2_CONV_PREFILL_TILE = tuple(variant.get("conv_tile", saved[0]))
        rope.ROPE_PREFILL_BLOCK_T = variant.get("rope_block_t", saved[1])
        try:
            yield
        finally:
            fused.MAMBA2_CONV_PREFILL_TILE, rope.ROPE_PREFILL_BLOCK_T = saved


def last_logits(model, batch: int = 4, prompt: int = 512) -> torch.Tensor:
    """The last token's logits (fp32) of one seeded prefill of `batch` × `prompt` tokens."""
    cache = model.allocate_cache(batch=batch, max_context=prompt)
    g = torch.Generator(device=cache.pos.device).manual_seed(1)
    tokens = torch.randint(0, model.config.vocab_size, (batch, prompt), device=cache.pos.device, generator=g)
    return model.prefill(tokens, cache, start=0).float()


def _each_variant(shapes, variants, outputs, time_at) -> list[tuple]:
    """(label, shape, ms, distance) for the defaults, each variant, then the defaults again, each at every shape:
    `time_at(i)` times shape i, `outputs()` is what the distance compares with the defaults' (relative by norm),
    both inside the variant's switches (`applied`)."""
    ref = outputs()
    rows = []
    for label, variant in [("default", {})] + variants + [("default again", {})]:
        with applied(variant):
            dist = (torch.linalg.vector_norm(outputs() - ref) / torch.linalg.vector_norm(ref)).item()
            rows += [(label, shape, time_at(i), dist) for i, shape in enumerate(shapes)]
    return rows


def run(model, shapes, variants, repeats: int = 2, timer=None, logits=last_logits) -> list[tuple]:
    """(label, (batch, prompt), ms, logits distance) for the defaults, each variant, then the defaults again,
    each at every shape."""
    if timer is None:
        from kernels.bench_model import time_prefill_ms

        timer = time_prefill_ms
    return _each_variant(shapes, variants, lambda: logits(model),
                         lambda i: min(timer(model, *shapes[i])[0] for _ in range(repeats)))


def check_scan_model(cfg) -> None:
    """ValueError unless `cfg`'s layers (some of them, for the hybrid) are scans."""
    if cfg.family not in ("mamba2", "mamba3-siso", "mamba3-mimo", "hybrid"):
        raise ValueError(f"--layer: {cfg.name} has no scan layer (a {cfg.family})")


def layer_inputs(cfg, batch: int, prompt: int, device="cuda") -> dict:
    """One scan layer's inputs for `segmented.prefill` at `cfg`'s head shapes (an SSM preset's config): seeded
    random bf16 x, z, B, C and fp32 scalars (`testing.random_inputs`), its pairing; Mamba-2 without biases."""
    from kernels.mamba3.testing import random_inputs

    check_scan_model(cfg)
    mamba2 = cfg.family == "mamba2"
    R = 1 if mamba2 else cfg.mimo_rank
    kw = random_inputs(batch, prompt, cfg.nheads, cfg.headdim, cfg.d_state, 0 if mamba2 else cfg.n_angles, R,
                       cfg.ngroups, device=device, dtype=torch.bfloat16, mamba2=mamba2)
    if mamba2:
        return dict(kw, B_bias=None, C_bias=None)
    return dict(kw, pairing=cfg.pairing)


def run_layer(cfg, shapes, variants, timer=None, inputs=layer_inputs) -> list[tuple]:
    """(label, (batch, prompt), ms, output distance) for one scan layer (`layer_inputs`): the defaults, each
    variant, the defaults again, at every shape; the distance is the outputs' from the defaults' at the first
    shape, relative by norm."""
    from kernels.mamba3 import segmented

    if timer is None:
        from kernels.bench import time_graph_ms as timer
    cases = [inputs(cfg, b, T) for b, T in shapes]
    return _each_variant(shapes, variants, lambda: segmented.prefill(**cases[0])[0].float(),
                         lambda i: timer(lambda: segmented.prefill(**cases[i])))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a preset (model.factory.build_model)")
    ap.add_argument("--shape", type=int, nargs=2, action="append", metavar=("BATCH", "PROMPT"),
                    help="a prefill shape (repeatable; default 128 512)")
    ap.add_argument("--variant", action="append", default=[], help="knob=value[; knob=value…] (repeatable)")
    ap.add_argument("--repeats", type=int, default=2, help="timings per point; the fastest is kept")
    ap.add_argument("--layer", action="store_true", help="one layer's scan (segmented.prefill), not the whole model")
    args = ap.parse_args(argv)
    try:
        variants = [(v, parse_variant(v)) for v in args.variant]
    except ValueError as exc:
        ap.error(str(exc))
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    shapes = [tuple(s) for s in args.shape or [(128, 512)]]
    if any(b < 1 or T < 1 for b, T in shapes):
        ap.error("--shape takes a positive batch and prompt")
    if args.layer:
        from model.config import get_config

        try:
            cfg = get_config(args.model)
            check_scan_model(cfg)
        except (KeyError, ValueError) as exc:
            ap.error(str(exc).strip("'\""))
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 1
    if args.layer:
        print(f"{torch.cuda.get_device_name()}; {args.model}, one scan layer; ms from a CUDA graph (median); outputs "
              f"at {shapes[0][0]} × {shapes[0][1]} against the defaults', relative by norm")
        for label, (b, T), ms, dist in run_layer(cfg, shapes, variants):
            print(f"{label:48s} {b:4d} × {T:<6d} {ms:10.3f} ms   outputs {dist:.1e}")
        return 0
    from model.factory import build_model

    model = build_model(args.model, device="cuda", dtype=torch.bfloat16, impl="triton", seed=0)
    print(f"{torch.cuda.get_device_name()}; {args.model}; prefill ms from a CUDA graph (fastest of {args.repeats}); "
          "logits: last token of a 4 × 512 prefill against the defaults', relative by norm")
    for label, (b, T), ms, dist in run(model, shapes, variants, args.repeats):
        print(f"{label:48s} {b:4d} × {T:<6d} {ms:10.3f} ms   logits {dist:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
