"""Batch-17–128 matrix-product benchmark (CUDA only): `kernels.skinny.linear` (split-K, summed in the kernel)
against `torch.nn.functional.linear` (cuBLAS) on the decode weights of our models, both replayed from a CUDA
graph, next to the floor (weight, x and y bytes at this GPU's copy rate, measured at the start of the run;
kernels.bench_gemv's counting, rings and timing).

    python -m kernels.bench_skinny                        # sweep at 128 rows, every decode shape but the head
    python -m kernels.bench_skinny --rows 128 64 --whole  # also the whole models, routed by the sweep
    python -m kernels.bench_skinny --json out.json

For each shape and row count it prints cuBLAS, the default launch, and the fastest launch of a grid
(block_n × block_k × stages × warps × split × fixup; narrow outputs, N ≤ 4096, get the whole grid, wide ones
the "last" fixup at splits 1–2) for each of the three ways of summing the splits, each launch checked against
an fp32 product before it is timed.

`--whole` then times each model's decode step (context 768, at each of the rows as the batch) twice in the same
run: with every product of 17–128 rows on cuBLAS, and with the shapes whose best launch beat cuBLAS by at least
`--margin` routed to that launch (`kernels.skinny.ROUTED`). It prints both, their ratio, and the largest
relative difference of the two steps' logits.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from kernels import skinny
from kernels.bench_gemv import DTYPE, Shape, _l2_bytes, decode_shapes, floor_us, ring_copies, time_us
from kernels.mamba3.testing import rel_max

NARROW_MAX_N = 4096
WHOLE_MODELS = ("mamba3-siso-1.5b", "mamba3-mimo-1.5b", "llama-3.2-1b")
BK_STAGES = ((64, 3), (64, 4), (128, 3))  # (block_k, stages): ≤ 192 KB of shared memory at 128 × 128 tiles


@dataclass
class Row:
    shape: str
    n: int
    k: int
    m: int
    cublas_us: float
    default_us: float
    best_us: dict  # fixup → µs of its fastest launch
    best_config: dict  # fixup → that launch
    floor_us: float

    @property
    def best(self) -> tuple[str, float]:
        fix = min(self.best_us, key=self.best_us.get)
        return fix, self.best_us[fix]


def grid(shape: Shape, m: int, sms: int) -> list[skinny.Config]:
    """The launches timed for one shape: splits giving 0.5–4 programs per SM (each split ≥ 2 K blocks)."""
    narrow = shape.n <= NARROW_MAX_N
    out = []
    for bn, (bk, st), w, fix in itertools.product((64, 128), BK_STAGES, (4, 8),
                                                   skinny.FIXUPS if narrow else ("last",)):
        if not narrow and (bn != 128 or st == 3 and bk == 64):
            continue
        blocks = -(-shape.n // bn)
        for split in (1, 2, 4, 8, 16, 32):
            progs = blocks * split
            if split > 1 and (progs > 4 * sms or -(-shape.k // bk) < 2 * split) or (narrow and progs < sms // 2):
                continue
            if not narrow and split > 2:
                continue
            if split == 1 and fix != "last":
                continue  # nothing to sum: one launch for the three
            out.append(skinny.Config(bn, bk, split, st, w, fix))
    return out


def bench_shape(shape: Shape, rows, bw: float, sms: int, device) -> list[Row]:
    g = torch.Generator(device=device).manual_seed(0)
    copies = ring_copies(shape.n * shape.k * DTYPE.itemsize, _l2_bytes(device))
    ring = torch.randn(copies, shape.n, shape.k, device=device, dtype=DTYPE, generator=g).mul_(shape.k ** -0.5)
    out = []
    for m in rows:
        x = torch.randn(m, shape.k, device=device, dtype=DTYPE, generator=g)
        want = F.linear(x.float(), ring[0].float())
        cublas = time_us(lambda w: F.linear(x, w), ring)
        default = time_us(lambda w: skinny.linear(x, w), ring)
        best_us, best_cfg, sums = {}, {}, {}
        for cfg in grid(shape, m, sms):
            try:
                y = skinny.linear(x, ring[0], config=cfg)
                err = rel_max(y, want)
                if not err < 2 ** -7:
                    print(f"    {shape.label} m={m} {cfg}: MISMATCH {err:.1e}, not timed", flush=True)
                    continue
                if cfg.fixup != "atomic":
                    sums.setdefault(cfg[:5], []).append(y)
                t = time_us(lambda wt: skinny.linear(x, wt, config=cfg), ring, quick=True)
            except Exception as e:  # noqa: BLE001 - a launch that does not build is reported, not fatal
                print(f"    {shape.label} m={m} {cfg}: {type(e).__name__}: {str(e)[:120]}", flush=True)
                continue
            if t < best_us.get(cfg.fixup, float("inf")):
                best_us[cfg.fixup], best_cfg[cfg.fixup] = t, cfg
        unequal = [c for c, ys in sums.items() if len(ys) == 2 and not torch.equal(ys[0], ys[1])]
        if unequal:
            print(f"    {shape.label} m={m}: 'kernel' and 'last' differ at {len(unequal)} launches", flush=True)
        row = Row(shape.label, shape.n, shape.k, m, cublas, default, best_us, best_cfg, floor_us(shape, m, bw))
        out.append(row)
        print(_line(row), flush=True)
    del ring
    torch.cuda.empty_cache()
    return out


def _line(r: Row) -> str:
    fix, best = r.best if r.best_us else ("-", float("nan"))
    per = " ".join(f"{f}={r.best_us[f]:.2f}" for f in skinny.FIXUPS if f in r.best_us)
    return (f"{r.shape:11s} {r.m:3d} {r.cublas_us:8.2f} {r.default_us:8.2f} {best:8.2f} {r.floor_us:7.2f} "
            f"{best / r.cublas_us:6.2f} {r.floor_us / best:5.2f} {r.floor_us / r.cublas_us:6.2f}  [{per}]  "
            f"{r.best_config.get(fix, '')}")


def routed(rows: list[Row], margin: float) -> dict[tuple[int, int], skinny.Config]:
    """(N, K) → best launch at the largest row count timed, where it beat cuBLAS by `margin`."""
    out = {}
    for r in sorted(rows, key=lambda r: r.m):
        if r.best_us:
            fix, best = r.best
            if best <= (1 - margin) * r.cublas_us:
                out[(r.n, r.k)] = r.best_config[fix]
            else:
                out.pop((r.n, r.k), None)
    return out


def whole(models, batches, table: dict, context: int = 768) -> list[dict]:
    """Each model's decode step with ROUTED empty and with `table`, same run."""
    from kernels.bench_model import time_decode_ms
    from model.factory import build_model
    from model.layers import glue_ops

    print(f"\nwhole model, context {context}: cuBLAS vs routed ({len(table)} shapes)")
    print(f"{'model':18s} {'batch':>5s} {'cuBLAS ms':>9s} {'routed ms':>9s} {'ratio':>6s} {'logits diff':>11s}")
    out = []
    for name in models:
        model = build_model(name, device="cuda", impl="triton").eval()
        model.use_glue(glue_ops("triton"))
        for b in batches:
            times, logits = {}, {}
            for label, routes in (("cublas", {}), ("routed", table)):
                skinny.ROUTED.clear()
                skinny.ROUTED.update(routes)
                with torch.inference_mode():
                    times[label] = time_decode_ms(model, b, context)
                    cache = model.allocate_cache(batch=b, max_context=context + 1)
                    g = torch.Generator(device="cuda").manual_seed(1)
                    for t in cache.tensors():
                        if t.is_floating_point():
                            t.normal_(0.0, 0.5, generator=g)
                    cache.pos.fill_(context)
                    token = torch.arange(b, device="cuda") % model.config.vocab_size
                    logits[label] = model.decode_step(token, cache).float()
            skinny.ROUTED.clear()
            diff = rel_max(logits["routed"], logits["cublas"])
            out.append(dict(model=name, batch=b, context=context, cublas_ms=times["cublas"],
                            routed_ms=times["routed"], logits_rel_diff=diff))
            print(f"{name:18s} {b:5d} {times['cublas']:9.3f} {times['routed']:9.3f} "
                  f"{times['routed'] / times['cublas']:6.3f} {diff:11.1e}", flush=True)
        del model
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(WHOLE_MODELS))
    ap.add_argument("--rows", nargs="+", type=int, default=[128], help="rows of x (17–128)")
    ap.add_argument("--shapes", nargs="+", help="only these NxK labels (default: every decode shape but the head)")
    ap.add_argument("--whole", action="store_true", help="also the whole models' decode step, routed by the sweep")
    ap.add_argument("--margin", type=float, default=0.03, help="how much faster than cuBLAS a route must be")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    if not all(skinny.MIN_ROWS <= m <= skinny.MAX_ROWS for m in args.rows):
        ap.error(f"--rows must lie in {skinny.MIN_ROWS}..{skinny.MAX_ROWS}")
    if not torch.cuda.is_available():
        print("kernels.bench_skinny needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    from kernels.bench import _git_rev, measure_copy_bytes_per_s
    from kernels.mamba3.tl_utils import sm_count

    torch.backends.cuda.matmul.allow_tf32 = False
    shapes = [s for s in decode_shapes(args.models) if s.n < 100_000]
    if args.shapes:
        shapes = [s for s in shapes if s.label in args.shapes]
    bw = measure_copy_bytes_per_s()
    dev, sms = torch.cuda.get_device_name(), sm_count("cuda")
    print(f"{dev} ({sms} SMs); copy {bw / 1e12:.2f} TB/s; torch {torch.__version__}, triton {triton.__version__}, "
          f"commit {_git_rev()}")
    print(f"{'shape NxK':11s} {'M':>3s} {'cuBLAS':>8s} {'default':>8s} {'best':>8s} {'floor':>7s} {'b/cuB':>6s} "
          f"{'frac':>5s} {'cuBfr':>6s}  [best per fixup, µs]  best launch")
    rows = [r for s in shapes for r in bench_shape(s, args.rows, bw, sms, torch.device("cuda"))]
    table = routed(rows, args.margin)
    print("\nrouted: " + ("; ".join(f"{n}x{k}: {c}" for (n, k), c in table.items()) or "nothing"))
    models = whole(args.models, sorted(set(args.rows), reverse=True), table) if args.whole else []
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev, "copy_bytes_per_s": bw, "commit": _git_rev(),
                       "rows": [asdict(r) | {"best_config": {k: str(v) for k, v in r.best_config.items()}}
                                for r in rows],
                       "routed": {f"{n}x{k}": str(c) for (n, k), c in table.items()}, "whole": models}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
