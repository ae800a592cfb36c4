"""Small-batch matrix-vector benchmark (CUDA only): `kernels.gemv.linear` (default config) against
`torch.nn.functional.linear` (cuBLAS) on the decode weights of our models, at 1–128 rows, both replayed
from a CUDA graph, next to the floor: the bytes moved (weight, x, y) at this GPU's copy bandwidth,
measured at the start of the run and counted as kernels.bench_model counts it (the copy's bytes read +
written per second, the rate a read-mostly kernel's bytes move at). `frac` = floor / time (1.0 = at
the copy rate).

Shapes come from the models themselves: each preset is built on the "meta" device (no memory) and every
nn.Linear weight of its blocks is taken, plus the LM head; shapes shared between models are timed once.
Weights rotate through enough copies to exceed the L2 cache several times over, so every call reads
from HBM as a decode step does (each layer's weights are different bytes).

    python -m kernels.bench_gemv                   # the table: 3 models' shapes × rows 1, 2, 4, 8, 16
    python -m kernels.bench_gemv --sweep           # also a block/split/warp grid per shape at 1 and 8 rows
    python -m kernels.bench_gemv --rows 128 --sweep --sweep-rows 128   # the skinny-GEMM grid at batch 128
    python -m kernels.bench_gemv --json out.json   # also the rows (and sweep timings) as JSON

The sweep prints, per shape and row count, the default config next to the fastest one, so the rule in
`kernels.gemv.default_config` can be re-tuned from one run. It times 96–108 configs per shape (half as
many at eight rows as at one: the dot needs block_n ≥ 16; splits past the K blocks are left out), ~1,000
over the three models' 11 shapes, each checked against an fp32 product first and timed for ≥ 50 ms; the
grid is ~80 kernel builds, shared by all shapes. Past 16 rows (`--sweep-rows 128`) a grid of 48
configs per shape (WIDE_SWEEP_GRID): whether the dot path can replace cuBLAS at batch 128.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from kernels import gemv
from kernels.mamba3.testing import rel_max

DEFAULT_MODELS = ("mamba3-siso-1.5b", "mamba3-mimo-1.5b", "llama-3.2-1b")
DEFAULT_ROWS = (1, 2, 4, 8, 16)
SWEEP_ROWS = (1, 8)
SWEEP_GRID = dict(block_n=(4, 8, 16, 32), block_k=(256, 512, 1024), split_k=(1, 2, 4), num_warps=(4, 8))
# past 16 rows the x tile grows with the rows: smaller K blocks, wider N blocks (shared memory, reuse)
# (16 configs with splits 1–2 lost to cuBLAS on every shape; with splits to 8 the narrow outputs N = 2048,
# only 16–32 N blocks, reach about cuBLAS's time, still at 0.3–0.5 of the copy rate: docs/benchmarks.md)
WIDE_SWEEP_GRID = dict(block_n=(32, 64, 128), block_k=(32, 64), split_k=(1, 2, 4, 8), num_warps=(4, 8))
RING_MIN_BYTES = 192 * 2**20  # weights cycled per graph: at least this, and 3× the L2 cache
RING_MAX_COPIES = 96
DTYPE = torch.bfloat16


@dataclass(frozen=True)
class Shape:
    n: int
    k: int
    uses: tuple[str, ...] = field(default=(), compare=False)

    @property
    def label(self) -> str:
        return f"{self.n}x{self.k}"


@dataclass
class Row:
    shape: str
    n: int
    k: int
    m: int
    ours_us: float
    cublas_us: float
    floor_us: float
    config: str
    max_rel_err: float

    @property
    def vs_cublas(self) -> float:
        return self.ours_us / self.cublas_us

    @property
    def frac(self) -> float:
        return self.floor_us / self.ours_us

    @property
    def cublas_frac(self) -> float:
        return self.floor_us / self.cublas_us


def model_linears(name: str) -> list[tuple[str, int, int]]:
    """(use, N, K) of every product in the blocks of preset `name` (each distinct name and shape once: a
    hybrid's attention and Mamba blocks both count) and of its LM head: an nn.Linear's weight, or for
    Linears the model runs as one product (`row_stacks`: Llama's q/k/v, gate/up) the stacked weight, named
    "q_proj+k_proj+v_proj". The model is built on the meta device, so the shapes are the model code's own."""
    from model.config import get_config
    from model.factory import instantiate

    model = instantiate(get_config(name), device="meta")
    found: dict[tuple[str, int, int], None] = {}
    for blk in model.blocks():
        for qual, mod in blk.named_modules():
            stacked = {n for names in getattr(mod, "row_stacks", ()) for n in names}
            for names in getattr(mod, "row_stacks", ()):
                parts = [getattr(mod, n).weight for n in names]
                use = f"{name} {qual + '.' if qual else ''}{'+'.join(names)}"
                found[(use, sum(w.shape[0] for w in parts), parts[0].shape[1])] = None
            for child, sub in mod.named_children():
                if isinstance(sub, torch.nn.Linear) and child not in stacked:
                    found[(f"{name} {qual + '.' if qual else ''}{child}", *sub.weight.shape)] = None
    found[(f"{name} lm_head", *model.lm_head.weight.shape)] = None
    return list(found)


def decode_shapes(models=DEFAULT_MODELS) -> list[Shape]:
    """Distinct (N, K) over the models' linears, each with every use that has it, in first-seen order."""
    uses: dict[tuple[int, int], list[str]] = {}
    for name in models:
        for use, n, k in model_linears(name):
            uses.setdefault((n, k), []).append(use)
    return [Shape(n, k, tuple(u)) for (n, k), u in uses.items()]


def floor_us(shape: Shape, m: int, bytes_per_s: float, elem_bytes: int = 2) -> float:
    """Weight, x and y bytes at the copy rate (read + written bytes per second), in µs."""
    return elem_bytes * (shape.n * shape.k + m * shape.k + m * shape.n) / bytes_per_s * 1e6


def ring_copies(weight_bytes: int, l2_bytes: int) -> int:
    """How many copies of a weight to cycle through so that consecutive reads of one copy are separated
    by more bytes than the L2 cache holds (capped for the smallest weights)."""
    target = max(RING_MIN_BYTES, 3 * l2_bytes)
    return max(1, min(RING_MAX_COPIES, math.ceil(target / weight_bytes)))


def sweep_configs(m: int, k: int) -> list[tuple[int, int, int, int]]:
    """(block_n, block_k, split_k, num_warps) of SWEEP_GRID (WIDE_SWEEP_GRID past gemv.DOT_ROWS rows) that
    can run at m rows: the dot path needs block_n ≥ 16, and a split must own at least one K block."""
    out = []
    grid = WIDE_SWEEP_GRID if m > gemv.DOT_ROWS else SWEEP_GRID
    for bn, bk, sk, w in itertools.product(*grid.values()):
        if (m > 1 and bn < 16) or sk > math.ceil(k / bk):
            continue
        out.append((bn, bk, sk, w))
    return out


def _fmt_config(cfg) -> str:
    bn, bk, sk, w = cfg
    return f"block_n={bn} block_k={bk} split_k={sk} num_warps={w}"


def time_us(call, ring: torch.Tensor, quick: bool = False) -> float:
    """GPU µs per call of call(weight), the weight cycling through `ring`, in one CUDA graph."""
    from kernels.bench import time_graph_ms

    order = itertools.cycle(range(ring.shape[0]))
    calls = max(20, ring.shape[0])
    opts = dict(min_reps=5, min_s=0.05) if quick else {}
    return time_graph_ms(lambda: call(ring[next(order)]), calls=calls, **opts) * 1e3


def _l2_bytes(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).L2_cache_size if device.type == "cuda" else 0


def bench_shape(shape: Shape, rows, bw: float, sweep: bool, device="cuda",
                sweep_rows=SWEEP_ROWS) -> tuple[list[Row], list[dict]]:
    """The table's rows for one weight shape, and (with `sweep`) every sweep timing at `sweep_rows`."""
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(0)
    copies = ring_copies(shape.n * shape.k * DTYPE.itemsize, _l2_bytes(device))
    ring = torch.randn(copies, shape.n, shape.k, device=device, dtype=DTYPE, generator=g).mul_(shape.k ** -0.5)
    out, timings = [], []
    for m in rows:
        x = torch.randn(m, shape.k, device=device, dtype=DTYPE, generator=g)
        cfg = gemv.default_config(m, shape.n, shape.k, device)
        want = F.linear(x.float(), ring[0].float())
        err = rel_max(gemv.linear(x, ring[0]), want)
        ours = time_us(lambda w: gemv.linear(x, w), ring)
        cublas = time_us(lambda w: F.linear(x, w), ring)
        out.append(Row(shape.label, shape.n, shape.k, m, ours, cublas, floor_us(shape, m, bw), _fmt_config(cfg),
                       err))
        print(_line(out[-1]), flush=True)
        if sweep and m in sweep_rows:
            timings += _sweep(shape, m, x, ring, want, ours, cfg)
    del ring
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out, timings


def _sweep(shape: Shape, m: int, x: torch.Tensor, ring: torch.Tensor, want: torch.Tensor, default_us: float,
           default_cfg) -> list[dict]:
    """Every runnable grid config at m rows, each checked against `want` (y of ring[0]) before it is timed."""
    best_us, best = default_us, default_cfg
    timings = []
    for cfg in sweep_configs(m, shape.k):
        bn, bk, sk, w = cfg
        try:
            err = rel_max(gemv.linear(x, ring[0], block_n=bn, block_k=bk, split_k=sk, num_warps=w), want)
            if not err < 2 ** -7:
                print(f"    {shape.label} m={m} {_fmt_config(cfg)}: MISMATCH {err:.1e}, not timed", flush=True)
                continue
            t = time_us(lambda wt: gemv.linear(x, wt, block_n=bn, block_k=bk, split_k=sk, num_warps=w), ring,
                        quick=True)
        except Exception as e:  # noqa: BLE001 - a config that does not build is reported, not fatal
            print(f"    {shape.label} m={m} {_fmt_config(cfg)}: {type(e).__name__}", flush=True)
            continue
        timings.append(dict(n=shape.n, k=shape.k, m=m, block_n=bn, block_k=bk, split_k=sk, num_warps=w, us=t))
        if t < best_us:
            best_us, best = t, cfg
    print(f"    sweep {shape.label} m={m}: default {default_us:7.2f} us ({_fmt_config(default_cfg)}); best "
          f"{best_us:7.2f} us ({_fmt_config(best)}), {default_us / best_us:.2f}x", flush=True)
    return timings


def _line(r: Row) -> str:
    return (f"{r.shape:12s} {r.m:3d} {r.ours_us:9.2f} {r.cublas_us:9.2f} {r.floor_us:9.2f} {r.vs_cublas:11.2f} "
            f"{r.frac:5.2f} {r.cublas_frac:6.2f}  {r.config}" + ("" if r.max_rel_err < 2 ** -7 else
                                                                 f"  MISMATCH {r.max_rel_err:.1e}"))


def run(shapes: list[Shape], rows, bw: float, sweep: bool = False, device="cuda",
        sweep_rows=SWEEP_ROWS) -> tuple[list[Row], list[dict]]:
    print(f"{'shape NxK':12s} {'M':>3s} {'ours us':>9s} {'cuBLAS us':>9s} {'floor us':>9s} {'ours/cuBLAS':>11s} "
          f"{'frac':>5s} {'cuBLAS':>6s}  default config")
    all_rows, timings = [], []
    for shape in shapes:
        r, t = bench_shape(shape, rows, bw, sweep, device, sweep_rows)
        all_rows += r
        timings += t
    return all_rows, timings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    ap.add_argument("--rows", nargs="+", type=int, default=list(DEFAULT_ROWS),
                    help=f"rows of x (M ≤ {gemv.MAX_ROWS})")
    ap.add_argument("--sweep", action="store_true", help="also time a config grid at the sweep rows")
    ap.add_argument("--sweep-rows", nargs="+", type=int, default=list(SWEEP_ROWS),
                    help=f"rows the sweep runs at (default {' '.join(map(str, SWEEP_ROWS))}; among --rows)")
    ap.add_argument("--json", help="also write the rows (and sweep timings) here")
    args = ap.parse_args(argv)
    if not all(1 <= m <= gemv.MAX_ROWS for m in args.rows):
        ap.error(f"--rows must lie in 1..{gemv.MAX_ROWS}")
    if not torch.cuda.is_available():
        print("kernels.bench_gemv needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    from kernels.bench import _git_rev, measure_copy_bytes_per_s

    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference products stay fp32
    shapes = decode_shapes(args.models)
    bw = measure_copy_bytes_per_s()
    dev = torch.cuda.get_device_name()
    print(f"{dev}; copy {bw / 1e12:.2f} TB/s (read+write); torch {torch.__version__}, triton {triton.__version__}, "
          f"commit {_git_rev()}")
    for s in shapes:
        print(f"  {s.label:12s} {', '.join(s.uses)}")
    rows, timings = run(shapes, args.rows, bw, args.sweep, sweep_rows=tuple(args.sweep_rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev, "copy_bytes_per_s": bw, "commit": _git_rev(), "torch": torch.__version__,
                       "triton": triton.__version__, "shapes": [asdict(s) for s in shapes],
                       "rows": [asdict(r) | {"vs_cublas": r.vs_cublas, "frac": r.frac, "cublas_frac": r.cublas_frac}
                                for r in rows],
                       "sweep": timings}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
