"""Whole-model benchmark (CUDA only): one decode step of each model, replayed from a CUDA graph, next to
its roofline floor, with the glue between the matrix products on the fused Triton kernels and on the
PyTorch twins (and, for Transformers, attention on the Triton decode kernel and on SDPA), all in one
run on one GPU. The floor uses model.cost's bytes and FLOPs of the step (weights + state or KV read,
state written) at this GPU's copy bandwidth and bf16 rate, measured at the start of the run.

    python -m kernels.bench_model                  # the issue's decode targets, then prefill 128 × 512
    python -m kernels.bench_model --models llama-3.2-1b --batch 1 --context 768 16384
    python -m kernels.bench_model --json out.json  # also the rows as JSON

At batch 1 each model is also timed with its matrix products on cuBLAS ("fused glue, cuBLAS products")
instead of the Triton matrix-vector kernel (kernels.gemv) that impl "triton" uses for one-row products,
and with SwiGLU's SiLU·product on a kernel of its own ("fused glue, SiLU·product apart") instead of folded
into the down product's loads (kernels.gemv.SiluMul; the default glue does so for one row only, so this A/B
is a batch-1 one), and every decode shape without programmatic dependent launch
("fused glue, no PDL": the Triton kernels launched one after another, not each scheduled while the one
before drains; tl_utils.pdl_meta).
Transformers are also timed with q/k/v and gate/up as separate products, as before they were stacked
("fused glue, separate q/k/v, gate/up"; model.layers.stacked_product), and the mixers' prologue in PyTorch,
as before it had kernels ("fused glue, PyTorch prologue"): Mamba-2's conv, Δ and gated norm at decode and
prefill (kernels.fused.mamba2_conv_step, mamba2_conv_prefill), Mamba-3's prefill B/C norms and activations
(kernels.fused.mamba3_preprocess). Prefill is also timed with its scans on tf32 dots at the scan's own tiles
("fused glue, tf32 scan dots", as before segmented._MODEL_DOTS), and with each branch's output written by its
product and added to the residual stream by the next norm's kernel ("fused glue, residual add apart", as before
model.layers.residual_product left that product to the next pre-norm, which runs it with the stream added).

Where a Mamba-3 MIMO model and its SISO twin of the same size are both timed, the run ends with MIMO ÷ SISO
for each decode shape and variant they share, against the issue's target of 1.1 ×.

Each Mamba-3 model is also timed with its SSM state cached in bf16 ("fused glue, bf16 state": the
planner's bf16-state what-if, measured; `--no-bf16-state` skips it).

Prefill is timed for every family (`--prefill 0 0` skips it), replayed from a CUDA graph as the profiler
times it (the GPU's time), and once launched from Python ("fused glue, eager": the host's launches
included, which set a short prefill's time). For a Transformer's prefill the "SDPA
attention" rows differ from the others in the rotary + cache write only, which runs in PyTorch there
(attention itself is SDPA on every prefill path; kernels.rope.rope_prefill_ on the Triton one).

With `--chunk-parallel`, every SSM model (the hybrid's layers included) is also timed with its prefill
scans on the chunk-parallel experiment, `kernels.mamba3.ssd` ("fused glue, chunk-parallel scan"; slower
than the model's path on an H200, docs/benchmarks.md).

Where the prefill shape has few sequences (one or two of 512 tokens or more), so that the model's prefill
cuts the scan into segments (kernels/mamba3/segmented.py), it is also timed with the plain scan ("fused
glue, plain scan") and with the segment starts chained in PyTorch ("fused glue, PyTorch chain") instead of
one Triton launch:

    python -m kernels.bench_model --models mamba3-siso-1.5b mamba3-mimo-1.5b --batch 1 --context 16 \
        --no-bf16-state --prefill 1 16384

Caches are filled with random values (never zeros, which can run faster than real data) and the
position is rewound before every replay, as the profiler does.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import statistics
from dataclasses import asdict, dataclass

import torch

from kernels.bench import _git_rev, measure_bf16_flop_per_s, measure_copy_bytes_per_s
from kernels.mamba3 import segmented
from kernels.mamba3.tl_utils import without_pdl
from model import cost
from model.factory import build_model
from model.layers import Glue, add_rms_norm, glue_ops, residual_add_apart, separate_products, silu_mul
from model.mamba2 import Mamba2Mixer
from model.mamba3 import Mamba3Mixer

# (model, batch, context) → the target for one decode step, in ms (None: reported, no target)
TARGETS_MS = {
    ("mamba3-siso-1.5b", 1, 768): 1.25,
    ("mamba3-siso-1.5b", 128, 768): 6.0,
    ("llama-3.2-1b", 1, 768): 1.0,
    ("llama-3.2-1b", 128, 768): 2.5,
}
DEFAULT_MODELS = ("mamba3-siso-1.5b", "mamba3-mimo-1.5b", "mamba2-1.5b", "llama-3.2-1b")


@dataclass
class Row:
    model: str
    phase: str
    batch: int
    context: int
    variant: str
    ms: float
    floor_ms: float
    target_ms: float | None

    @property
    def frac(self) -> float:
        return self.floor_ms / self.ms


CUBLAS = "fused glue, cuBLAS products"  # one-row decode products left to cuBLAS (A/B of kernels.gemv)
APART = "fused glue, SiLU·product apart"  # batch-1 SiLU·products not deferred (A/B of gemv.SiluMul)
ONE_ROW_ONLY = (CUBLAS, APART)  # A/Bs of the one-row path: decode at batch 1 only
PLAIN_SCAN = "fused glue, plain scan"  # prefill without segments (A/B of kernels.mamba3.segmented)
TORCH_CHAIN = "fused glue, PyTorch chain"  # segment starts chained in PyTorch (segmented.chained_by)
# the mixers' prologue in PyTorch (A/B): Mamba-2's conv, Δ and gated norm at decode and prefill (its prefill scan
# then also reads zero biases, as that path passes them); Mamba-3's prefill B/C norms and activations
# (kernels.fused.mamba2_conv_step, mamba2_conv_prefill, mamba3_preprocess)
PROLOGUE_TORCH = "fused glue, PyTorch prologue"
SEPARATE = "fused glue, separate q/k/v, gate/up"  # Llama's products unstacked (A/B of layers.stacked_product)
NO_PDL = "fused glue, no PDL"  # the decode graph captured without programmatic dependent launch (A/B)
EAGER = "fused glue, eager"  # prefill launched from Python instead of replayed from a CUDA graph (A/B)
SSD = "fused glue, chunk-parallel scan"  # prefill scans on kernels.mamba3.ssd (the experiment's A/B)
TF32_DOTS = "fused glue, tf32 scan dots"  # prefill scans on tf32 operands (A/B of segmented._MODEL_DOTS)
RESIDUAL_APART = "fused glue, residual add apart"  # branch outputs added by the norm kernel (A/B of residual_product)


def _glues() -> dict[str, Glue]:
    from kernels import fused, gemv

    return {"fused glue": glue_ops("triton"), CUBLAS: Glue(fused.add_rms_norm, fused.silu_mul),
            APART: Glue(fused.add_rms_norm, fused.silu_mul, gemv.small_linear),
            "twin glue": Glue(add_rms_norm, silu_mul)}


def _attention_modules(model) -> list:
    from model.hybrid import MHA
    from model.transformer import LlamaAttention

    return [m for m in model.modules() if isinstance(m, (LlamaAttention, MHA))]


def variants(model, phase: str = "decode", *, chunk_parallel: bool = False) -> list[tuple[str, dict]]:
    """(label, settings) pairs for one phase: glue fused / twin, times attention Triton / SDPA where the model
    has it (the twin glue with SDPA attention is the path before these kernels), and the A/Bs that apply to
    the phase: at decode cuBLAS products, the SiLU·product on its own kernel, no PDL, Llama's separate
    products and Mamba-2's prologue in PyTorch; at prefill (products of many rows, cuBLAS's either way)
    the mixers' prologue in PyTorch, the scans on tf32 dots, the residual add apart from the branch's last
    product, and with `chunk_parallel` the scans on the chunk-parallel experiment."""
    decode = phase == "decode"
    glue = [(g, {"glue": g, "attention": "triton"}) for g in _glues() if decode or g not in ONE_ROW_ONLY]
    if not decode:
        glue.append((EAGER, {"glue": "fused glue", "attention": "triton", "graph": False}))
    if model.impl != "triton":
        return glue
    if decode:
        glue.append((NO_PDL, {"glue": "fused glue", "attention": "triton", "pdl": False}))
    mixers = [m for m in model.modules() if isinstance(m, (Mamba2Mixer, Mamba3Mixer))]
    if any(isinstance(m, Mamba2Mixer) or not decode for m in mixers):
        glue.append((PROLOGUE_TORCH, {"glue": "fused glue", "attention": "triton", "prologue": False}))
    if chunk_parallel and not decode and mixers:
        glue.append((SSD, {"glue": "fused glue", "attention": "triton", "ssd": True}))
    if not decode and mixers:
        glue.append((TF32_DOTS, {"glue": "fused glue", "attention": "triton", "dots": "tf32"}))
    if not decode:
        glue.append((RESIDUAL_APART, {"glue": "fused glue", "attention": "triton", "residual": False}))
    if decode and any(getattr(m, "row_stacks", ()) for m in model.modules()):
        glue.append((SEPARATE, {"glue": "fused glue", "attention": "triton", "stacked": False}))
    if not _attention_modules(model):
        return glue
    return glue + [(f"{g}, SDPA attention", {"glue": g, "attention": "chunked"}) for g in _glues()
                   if g not in ONE_ROW_ONLY]


@contextlib.contextmanager
def _prefill_switches(settings: dict):
    """The module-level switches a prefill variant holds while it is timed: the chunk-parallel scan, the scans'
    dot precision, the residual add apart from the branch's last product."""
    with contextlib.ExitStack() as stack:
        if settings.get("ssd"):
            stack.enter_context(segmented.chunk_parallel())
        if settings.get("dots"):
            stack.enter_context(segmented.model_dots(settings["dots"]))
        if not settings.get("residual", True):
            stack.enter_context(residual_add_apart())
        yield


def _apply(model, settings: dict) -> None:
    model.use_glue(_glues()[settings["glue"]])
    for m in model.modules():
        if isinstance(m, (Mamba2Mixer, Mamba3Mixer)):  # the mixers' prologue kernels go with the fused glue
            m.fast = model.impl == "triton" and settings["glue"] != "twin glue" and settings.get("prologue", True)
    for m in _attention_modules(model):
        m.impl = settings["attention"] if model.impl == "triton" else model.impl


def chunk_parallel_fits(model, batch: int, prompt: int) -> bool:
    """Whether `segmented.chunk_parallel()` runs this model's prefill scans on the chunk-parallel scan, or keeps
    them on the chunked one because their carried states would pass `segmented.SSD_MAX_BYTES`."""
    cfg = model.config
    return not hasattr(cfg, "nheads") or segmented.chunk_parallel_takes(  # a model without scans: nothing kept
        batch, prompt, cfg.nheads, cfg.headdim, cfg.d_state, getattr(cfg, "mimo_rank", 1))


def prefill_segments(model, batch: int, prompt: int) -> int:
    """How many segments the model's prefill cuts its scans into at this shape (1: the plain scan, also
    on any path other than the Triton one)."""
    cfg = model.config
    if model.impl != "triton" or not hasattr(cfg, "nheads"):  # Transformers have no scan to cut
        return 1
    return segmented.auto_segments(batch, prompt, cfg.nheads, next(model.parameters()).device,
                                   rank=getattr(cfg, "mimo_rank", 1))


def _randomise(cache) -> None:
    for t in cache.tensors():
        if t.is_floating_point():
            t.normal_(0.0, 0.5)


def _median_ms(fn, before, min_repeats: int, min_s: float) -> float:
    """Median GPU time of `fn` (events around each call; `before` outside them), as the profiler times."""
    from profiler.scenarios import TimingPolicy
    from profiler.timing import CudaEventClock, time_calls

    policy = TimingPolicy(warmup=2, min_repeats=min_repeats, min_duration_s=min_s)
    return statistics.median(time_calls(fn, clock=CudaEventClock(torch.device("cuda")), policy=policy,
                                        before=before).samples_ms)


def time_decode_ms(model, batch: int, context: int) -> float:
    from profiler.timing import capture_cuda_graph

    cache = model.allocate_cache(batch=batch, max_context=context + 1)
    _randomise(cache)
    token = torch.randint(0, model.config.vocab_size, (batch,), device="cuda")

    def rewind() -> None:
        cache.pos.fill_(context)

    replay = capture_cuda_graph(lambda: model.decode_step(token, cache), before=rewind)
    return _median_ms(replay, rewind, 20, 0.3)


def time_prefill_ms(model, batch: int, prompt: int, graph: bool = True) -> tuple[float, str]:
    """(median ms, "" or why it was timed eagerly): one prefill replayed from a CUDA graph, as the profiler
    times it, or eagerly (`graph=False`: the host's launches included)."""
    from profiler.timing import capture_cuda_graph

    cache = model.allocate_cache(batch=batch, max_context=prompt)
    tokens = torch.randint(0, model.config.vocab_size, (batch, prompt), device="cuda")
    call, note = (lambda: model.prefill(tokens, cache, start=0)), ""
    if graph:
        try:
            call = capture_cuda_graph(call, before=cache.pos.zero_)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # a path that cannot be captured is still timed, and says so
            note = f" (eager: capture failed, {type(exc).__name__})"
    return _median_ms(call, cache.pos.zero_, 3, 1.0), note


def _decode_rows(name: str, model, batches, contexts, bw: float, rate: float, labelled=None) -> list[Row]:
    """Decode rows of `model` for every (batch, context) and variant (`labelled`: one fixed label instead)."""
    rows, cfg = [], model.config
    for b in batches:
        for c in contexts:
            c_cost = cost.decode_cost(cfg, b, c)
            floor = max(c_cost.bytes / bw, c_cost.flops / rate) * 1e3
            for label, settings in ([(labelled, None)] if labelled else variants(model)):
                if label in ONE_ROW_ONLY and b > 1:
                    continue  # the same kernels as "fused glue" at this batch (gemv.small_linear: one row)
                if settings is not None:
                    _apply(model, settings)
                pdl = settings is None or settings.get("pdl", True)
                stacked = settings is None or settings.get("stacked", True)
                try:
                    with (contextlib.nullcontext() if pdl else without_pdl(),
                          contextlib.nullcontext() if stacked else separate_products()):
                        ms = time_decode_ms(model, b, c)
                except torch.OutOfMemoryError:
                    ms = math.nan
                torch.cuda.empty_cache()
                rows.append(Row(name, "decode", b, c, label, ms, floor,
                                None if labelled else TARGETS_MS.get((name, b, c))))
                print(_line(rows[-1]), flush=True)
    return rows


def run(models, batches, contexts, prefill: tuple[int, int] | None, bw: float, rate: float,
        bf16_state: bool = True, device: str = "cuda", impl: str = "triton",
        chunk_parallel: bool = False) -> list[Row]:
    rows = []
    for name in models:
        model = build_model(name, device=device, dtype=torch.bfloat16, impl=impl, seed=0)
        cfg = model.config
        rows += _decode_rows(name, model, batches, contexts, bw, rate)
        if bf16_state and getattr(cfg, "state_dtype", None) == "float32":
            # the planner's bf16-state what-if, measured: same weights, the SSM state cached in bf16
            twin = build_model(dataclasses.replace(cfg, state_dtype="bfloat16"), device=device,
                               dtype=torch.bfloat16, impl=impl, seed=0)
            _apply(twin, {"glue": "fused glue", "attention": "triton"})
            rows += _decode_rows(name, twin, batches, contexts, bw, rate, labelled="fused glue, bf16 state")
            del twin
            torch.cuda.empty_cache()
        if prefill:
            b, T = prefill
            p_cost = cost.prefill_cost(cfg, b, T)
            floor = max(p_cost.bytes / bw, p_cost.flops / rate) * 1e3
            for label, settings in variants(model, "prefill", chunk_parallel=chunk_parallel):
                _apply(model, settings)
                with _prefill_switches(settings):
                    ms, note = time_prefill_ms(model, b, T, graph=settings.get("graph", True))
                if settings.get("ssd") and not chunk_parallel_fits(model, b, T):
                    note += " (carried states over segmented.SSD_MAX_BYTES: the chunked scan ran)"
                rows.append(Row(name, "prefill", b, T, label + note, ms, floor,
                                350.0 if (name, b, T) == ("mamba3-siso-1.5b", 128, 512) else None))
                print(_line(rows[-1]), flush=True)
                torch.cuda.empty_cache()
            if prefill_segments(model, b, T) > 1:
                _apply(model, {"glue": "fused glue", "attention": "triton"})
                switches = ((PLAIN_SCAN, segmented.plain_scans()), (TORCH_CHAIN, segmented.chained_by("torch")))
                for label, switch in switches:
                    with switch:
                        ms, note = time_prefill_ms(model, b, T)
                        rows.append(Row(name, "prefill", b, T, label + note, ms, floor, None))
                    print(_line(rows[-1]), flush=True)
                    torch.cuda.empty_cache()
        del model
        torch.cuda.empty_cache()
    return rows


MIMO_OVER_SISO_TARGET = 1.1  # the issue: a MIMO decode step within 1.1 × SISO's at equal batch


def mimo_over_siso(rows: list[Row]) -> list[tuple[str, int, int, str, float]]:
    """(MIMO model, batch, context, variant, MIMO ms ÷ SISO ms) for every decode row of a Mamba-3 MIMO model
    whose SISO twin of the same size was timed in the same run at the same shape and variant."""
    siso = {(r.model, r.batch, r.context, r.variant): r.ms for r in rows if r.phase == "decode"}
    out = []
    for r in rows:
        twin = (r.model.replace("mamba3-mimo-", "mamba3-siso-", 1), r.batch, r.context, r.variant)
        if r.phase == "decode" and r.model.startswith("mamba3-mimo-") and twin in siso:
            out.append((r.model, r.batch, r.context, r.variant, r.ms / siso[twin]))
    return out


def _line(r: Row) -> str:
    target = "" if r.target_ms is None else f"{r.target_ms:8.2f}"
    return (f"{r.model:18s} {r.phase:7s} {r.batch:4d} {r.context:6d} {r.variant:28s} {r.ms:9.3f} "
            f"{r.floor_ms:9.3f} {r.frac:5.2f} {target}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 128])
    ap.add_argument("--context", nargs="+", type=int, default=[768])
    ap.add_argument("--prefill", nargs=2, type=int, default=[128, 512], metavar=("BATCH", "PROMPT"),
                    help="Mamba-3 and Mamba-2 whole-model prefill shape (0 0 to skip)")
    ap.add_argument("--no-bf16-state", action="store_true",
                    help="skip the Mamba-3 decode rows with the SSM state cached in bf16")
    ap.add_argument("--chunk-parallel", action="store_true",
                    help="also time SSM prefill on the chunk-parallel scan experiment (kernels.mamba3.ssd)")
    ap.add_argument("--json", help="also write the rows and the device here")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU")
    bw, rate = measure_copy_bytes_per_s(), measure_bf16_flop_per_s()
    dev = torch.cuda.get_device_name()
    print(f"{dev}; copy {bw / 1e12:.2f} TB/s, bf16 {rate / 1e12:.0f} TFLOP/s; torch {torch.__version__}, "
          f"commit {_git_rev()}")
    print(f"{'model':18s} {'phase':7s} {'b':>4s} {'ctx':>6s} {'variant':28s} {'ms':>9s} {'floor ms':>9s} "
          f"{'frac':>5s} {'target':>8s}")
    prefill = tuple(args.prefill) if all(args.prefill) else None
    rows = run(args.models, args.batch, args.context, prefill, bw, rate, bf16_state=not args.no_bf16_state,
               chunk_parallel=args.chunk_parallel)
    for model, b, ctx, variant, ratio in mimo_over_siso(rows):
        print(f"MIMO ÷ SISO {model[len('mamba3-mimo-'):]} decode b={b} ctx={ctx} ({variant}): {ratio:.2f} × "
              f"(target ≤ {MIMO_OVER_SISO_TARGET})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev, "copy_bytes_per_s": bw, "bf16_flop_per_s": rate, "commit": _git_rev(),
                       "rows": [asdict(r) | {"frac": r.frac} for r in rows]}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
