"""Batch-17–128 matrix-product benchmark (CUDA only): `kernels.skinny` (split-K, TMA-fed) against
`torch.nn.functional.linear` (cuBLAS) on the decode weights of our models, both replayed from a CUDA graph, next
to the floor (weight, x and y bytes at this GPU's copy rate, measured at the start of the run; kernels.bench_gemv's
counting, rings and timing).

    python -m kernels.bench_skinny                        # sweep at 128 rows, every decode shape but the head
    python -m kernels.bench_skinny --rows 128 64 32 --whole  # also the whole models, routed by the sweep
    python -m kernels.bench_skinny --json out.json
    python -m kernels.bench_skinny --shipped --models mamba2-1.5b --rows 128 32   # shipped routing vs cuBLAS only
    python -m kernels.bench_skinny --shipped --extra 2048x2048 --extra 2048x2048:64 --models llama-3.2-1b
                                                          # ... and shipped plus a shape (at up to 64 rows)

For each shape and row count it prints cuBLAS, the default launch and the fastest launch of a grid (block_n ×
(block_k, stages) × warps × split; narrow outputs, N ≤ 4096, get the whole grid, wide ones splits 1–2), each
checked against an fp32 product before it is timed. Where N is a model width (2048), it also times a branch's
last product with the add + RMSNorm after it, as the model runs them: cuBLAS's product then the norm kernel,
against the fastest launch's split partials summed by the norm kernel (`skinny.partials`).

`--whole` then times each model's decode step (context 768, each of the rows as the batch) in the same run:
every product of 17–128 rows on cuBLAS; the shapes where the fastest launch (or, for a width-N shape, the
partials into the norm) beat cuBLAS by at least `--margin` routed to it (`kernels.skinny.ROUTED`); and every
narrow shape routed. It prints each, the ratios, and the largest relative difference of the logits.
"""

from __future__ import annotations

import argparse
import contextlib
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
WIDTH = 2048  # the models' d_model: a branch's last product has N = WIDTH
WHOLE_MODELS = ("mamba3-siso-1.5b", "mamba3-mimo-1.5b", "llama-3.2-1b")
BK_STAGES = ((64, 3), (64, 4), (128, 3), (128, 4))  # (block_k, stages): ≤ 192 KB of shared memory at 64 × 128


@dataclass
class Row:
    shape: str
    n: int
    k: int
    m: int
    cublas_us: float
    default_us: float
    best_us: float
    best_config: str
    floor_us: float
    cublas_norm_us: float | None = None  # cuBLAS product + add + RMSNorm (width-N shapes)
    partials_norm_us: float | None = None  # the best launch's partials summed by the add + RMSNorm

    def gain(self) -> float:
        """cuBLAS's time over ours, as the model would run this shape (with the norm for width-N shapes)."""
        if self.partials_norm_us is not None:
            return self.cublas_norm_us / self.partials_norm_us
        return self.cublas_us / self.best_us


def grid(shape: Shape, m: int, sms: int) -> list[skinny.Config]:
    """The launches timed for one shape: narrow ones (N ≤ 4096) every tile, splits giving 0.5–4 programs per SM
    with at least two K blocks each; wide ones 128-column tiles, splits 1–2."""
    narrow = shape.n <= NARROW_MAX_N
    out = []
    for bn, (bk, st), w in itertools.product((64, 128), BK_STAGES, (4, 8)):
        if not narrow and bn != 128:
            continue
        blocks = -(-shape.n // bn)
        for split in (1, 2, 4, 8, 16):
            progs = blocks * split
            if split > 1 and (progs > 4 * sms or -(-shape.k // bk) < 2 * split):
                continue
            if narrow and progs < sms // 2 or not narrow and split > 2:
                continue
            out.append(skinny.Config(bn, bk, split, st, w))
    return out


def _norm_pair(x, ring, cfg, n: int, device) -> tuple[float, float]:
    """(cuBLAS product + add_rms_norm, partials + add_rms_norm) µs, h fp32 as the models' residual stream."""
    from kernels import fused

    h = torch.randn(x.shape[0], n, device=device, dtype=torch.float32)
    nw = torch.ones(n, device=device, dtype=DTYPE)
    cub = time_us(lambda w: fused.add_rms_norm(h, F.linear(x, w), nw, 1e-5), ring)
    ours = time_us(lambda w: fused.add_rms_norm(h, skinny.partials(x, w, config=cfg), nw, 1e-5), ring)
    a = fused.add_rms_norm(h, F.linear(x, ring[0]), nw, 1e-5)[1]
    b = fused.add_rms_norm(h, skinny.partials(x, ring[0], config=cfg), nw, 1e-5)[1]
    err = rel_max(b, a)
    if not err < 2 ** -6:
        print(f"    norm after partials: MISMATCH {err:.1e} against cuBLAS's", flush=True)
    return cub, ours


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
        best_us, best = float("inf"), None
        for cfg in grid(shape, m, sms):
            try:
                err = rel_max(skinny.linear(x, ring[0], config=cfg), want)
                if not err < 2 ** -7:
                    print(f"    {shape.label} m={m} {cfg}: MISMATCH {err:.1e}, not timed", flush=True)
                    continue
                t = time_us(lambda wt: skinny.linear(x, wt, config=cfg), ring, quick=True)
            except Exception as e:  # noqa: BLE001 - a launch that does not build is reported, not fatal
                print(f"    {shape.label} m={m} {cfg}: {type(e).__name__}: {str(e)[:120]}", flush=True)
                continue
            if t < best_us:
                best_us, best = t, cfg
        row = Row(shape.label, shape.n, shape.k, m, cublas, default, best_us, str(best), floor_us(shape, m, bw))
        if shape.n == WIDTH and best is not None:
            row.cublas_norm_us, row.partials_norm_us = _norm_pair(x, ring, best, shape.n, device)
        out.append((row, best))
        print(_line(row), flush=True)
    del ring
    torch.cuda.empty_cache()
    return out


def _line(r: Row) -> str:
    norm = (f"  +norm: cuBLAS {r.cublas_norm_us:6.2f} partials {r.partials_norm_us:6.2f}"
            if r.partials_norm_us is not None else "")
    return (f"{r.shape:11s} {r.m:3d} {r.cublas_us:8.2f} {r.default_us:8.2f} {r.best_us:8.2f} {r.floor_us:7.2f} "
            f"{r.best_us / r.cublas_us:6.2f} {r.floor_us / r.best_us:5.2f} {r.floor_us / r.cublas_us:6.2f}  "
            f"{r.best_config}{norm}")


def routed(rows: list[tuple[Row, skinny.Config]], margin: float | None) -> dict[tuple[int, int], skinny.Config]:
    """(N, K) → the best launch at the largest row count timed, where it beat cuBLAS by `margin` (as the model runs
    the shape: `Row.gain`) at every row count timed; `margin` None: every narrow shape."""
    out, lost = {}, set()
    for r, cfg in sorted(rows, key=lambda rc: rc[0].m):
        if cfg is None:
            continue
        if margin is None:
            if r.n <= NARROW_MAX_N:
                out[(r.n, r.k)] = cfg
        elif r.gain() >= 1 / (1 - margin) and (r.n, r.k) not in lost:
            out[(r.n, r.k)] = cfg
        else:
            lost.add((r.n, r.k))
            out.pop((r.n, r.k), None)
    return out


def _step_logits(model, b: int, context: int) -> torch.Tensor:
    cache = model.allocate_cache(batch=b, max_context=context + 1)
    g = torch.Generator(device="cuda").manual_seed(1)
    for t in cache.tensors():
        if t.is_floating_point():
            t.normal_(0.0, 0.5, generator=g)
    cache.pos.fill_(context)
    token = torch.arange(b, device="cuda") % model.config.vocab_size
    return model.decode_step(token, cache).float()


@contextlib.contextmanager
def routing(table: dict, max_rows: dict | None = None):
    """skinny.ROUTED is `table` and skinny.ROUTED_MAX_ROWS `max_rows` (default: none) inside, what they were
    after."""
    saved = [(d, dict(d)) for d in (skinny.ROUTED, skinny.ROUTED_MAX_ROWS)]
    for d, new in zip((skinny.ROUTED, skinny.ROUTED_MAX_ROWS), (table, max_rows or {})):
        d.clear()
        d.update(new)
    try:
        yield
    finally:
        for d, old in saved:
            d.clear()
            d.update(old)


def extra_table(specs: list[str], m: int, sms: int) -> tuple[dict, dict, str]:
    """The shipped routing plus each 'NxK' or 'NxK:ROWS' of `specs` (that shape at up to ROWS rows, on
    `skinny.default_config` for m rows): (routes, max rows, a label)."""
    table, limits = dict(skinny.ROUTED), dict(skinny.ROUTED_MAX_ROWS)
    for spec in specs:
        shape, _, rows = spec.partition(":")
        try:
            n, k = (int(v) for v in shape.lower().split("x"))
            limit = int(rows) if rows else skinny.MAX_ROWS
        except ValueError:
            raise ValueError(f"--extra {spec!r}: expected NxK or NxK:ROWS, e.g. 2048x2048:64") from None
        if n < 1 or k < 1 or not skinny.MIN_ROWS <= limit <= skinny.MAX_ROWS:
            raise ValueError(f"--extra {spec!r}: N and K must be ≥ 1 and ROWS in {skinny.MIN_ROWS}..{skinny.MAX_ROWS}")
        table[(n, k)] = skinny.default_config(m, n, k, "cuda", sms)
        if limit < skinny.MAX_ROWS:
            limits[(n, k)] = limit
        else:
            limits.pop((n, k), None)
    return table, limits, "shipped + " + " ".join(specs)


def whole(models, batches, tables: dict[str, tuple[dict, dict]], context: int = 768) -> list[dict]:
    """Each model's decode step under every routing (label → (routes, max rows); the first the reference), same
    run."""
    from kernels.bench_model import time_decode_ms
    from model.factory import build_model
    from model.layers import glue_ops

    labels = list(tables)
    print(f"\nwhole model, context {context}, ms (ratio to {labels[0]}; logits' largest relative difference)")
    print(f"{'model':18s} {'batch':>5s} " + " ".join(f"{lab:>26s}" for lab in labels))
    out = []
    for name in models:
        model = build_model(name, device="cuda", impl="triton").eval()
        model.use_glue(glue_ops("triton"))
        for b in batches:
            res = {}
            for label, (table, limits) in tables.items():
                with routing(table, limits), torch.inference_mode():
                    res[label] = (time_decode_ms(model, b, context), _step_logits(model, b, context))
            ref_ms, ref_logits = res[labels[0]]
            cells = []
            for label in labels:
                ms, logits = res[label]
                diff = rel_max(logits, ref_logits)
                out.append(dict(model=name, batch=b, context=context, routing=label, ms=ms, logits_rel_diff=diff))
                cells.append(f"{ms:8.3f} ({ms / ref_ms:5.3f}; {diff:7.1e})")
            print(f"{name:18s} {b:5d} " + " ".join(f"{c:>26s}" for c in cells), flush=True)
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
    ap.add_argument("--shipped", action="store_true",
                    help="no sweep: the whole models on cuBLAS and under the shipped routing (skinny.ROUTED)")
    ap.add_argument("--extra", nargs="+", action="append", metavar="NxK[:ROWS]",
                    help="with --shipped: also time the shipped routing plus these shapes (at up to ROWS rows); "
                         "repeat for more tables")
    ap.add_argument("--margin", type=float, default=0.03, help="how much faster than cuBLAS a route must be")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    if not all(skinny.MIN_ROWS <= m <= skinny.MAX_ROWS for m in args.rows):
        ap.error(f"--rows must lie in {skinny.MIN_ROWS}..{skinny.MAX_ROWS}")
    if args.extra and not args.shipped:
        ap.error("--extra goes with --shipped")
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
          f"{'frac':>5s} {'cuBfr':>6s}  best launch (µs)")
    if args.shipped:
        rows, tables = [], {"cuBLAS": ({}, {}), "shipped": (dict(skinny.ROUTED), dict(skinny.ROUTED_MAX_ROWS))}
        for specs in args.extra or ():
            try:
                table, limits, label = extra_table(specs, max(args.rows), sms)
            except ValueError as e:
                ap.error(str(e))
            tables[label] = (table, limits)
    else:
        rows = [rc for s in shapes for rc in bench_shape(s, args.rows, bw, sms, torch.device("cuda"))]
        tables = {"cuBLAS": ({}, {}), "routed": (routed(rows, args.margin), {}),
                  "every narrow": (routed(rows, None), {})}
    for label, (table, limits) in list(tables.items())[1:]:
        print(f"{label}: " + ("; ".join(f"{n}x{k}: {c}" + (f" (≤ {limits[n, k]} rows)" if (n, k) in limits else "")
                                        for (n, k), c in table.items()) or "nothing"))
    timed = args.whole or args.shipped
    models = whole(args.models, sorted(set(args.rows), reverse=True), tables) if timed else []
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev, "copy_bytes_per_s": bw, "commit": _git_rev(),
                       "rows": [asdict(r) for r, _ in rows],
                       "tables": {lab: {f"{n}x{k}": str(c) + (f" max_rows={lim[n, k]}" if (n, k) in lim else "")
                                        for (n, k), c in t.items()} for lab, (t, lim) in tables.items()},
                       "whole": models}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
