"""A/B of the decode step's launch defaults (CUDA only): variants of one regime's `StepLaunch`, one layer
(`step_fused` replayed from a CUDA graph, 1.5B head shapes) and optionally the whole 1.5B model
(`kernels.bench_model.time_decode_ms`, min of 3), all in one run, each variant's first step checked
against the default's output and state.

    python -m kernels.bench_step_ab --rank 4 --batch 128 32 --variant fold_q=True --variant max_registers=96
    python -m kernels.bench_step_ab --rank 1 --state bf16 --regime many --variant num_warps=2 --whole
    python -m kernels.bench_step_ab --rank 1 --batch 128 16 --variant "replicated_o='fp32 bf16'" \\
        --models mamba2-1.5b hybrid-1.5b mamba3-siso-1.5b:bfloat16

A variant is `field=value[,field=value…]` of `kernels.mamba3.step.StepLaunch` (values as Python literals),
applied to the regime's defaults for the run's MIMO-ness (`--regime`, else the one the step picks at each
batch on this GPU, `step.pick_regime`), and every launch, the whole model's too, is held to that regime (the
default's as well). `--threshold-tma N` sets MIMO_TMA_MANY_PROGRAMS_PER_SM, `--threshold-bf16 N`
MIMO_BF16_TMA_PROGRAMS_PER_SM, `--threshold-bf16-many N` MIMO_BF16_MANY_PROGRAMS_PER_SM, each a variant of its
own, timed with the step choosing its regime (so the threshold counts; labelled "auto").

`--models PRESET[:STATE_DTYPE] …` times those whole models instead of one layer (at 768 tokens; a preset's Mamba
layers take the rank's defaults, Mamba-2's and the hybrid's with --rank 1): each variant is applied to all three
regimes and the step picks its regime per batch as it would, three rounds of every variant in turn, the best of
each kept, with its ratio to the default's.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools

import torch

from kernels.mamba3 import step as stepmod
from kernels.mamba3.reference import ScanState
from kernels.mamba3.step import REGIMES, StepLaunch

STATES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODELS = {1: "mamba3-siso-1.5b", 4: "mamba3-mimo-1.5b"}
THRESHOLDS = {"tma": "MIMO_TMA_MANY_PROGRAMS_PER_SM", "bf16": "MIMO_BF16_TMA_PROGRAMS_PER_SM",
              "bf16_many": "MIMO_BF16_MANY_PROGRAMS_PER_SM"}


def parse_variant(text: str) -> dict:
    """`field=value,…` → {field: value} for StepLaunch fields, values as Python literals; ValueError otherwise."""
    from kernels.bench import parse_assignments

    return parse_assignments(text, ",", StepLaunch._fields.__contains__,
                             f"field=value with a StepLaunch field ({', '.join(StepLaunch._fields)})", "field=value")


@contextlib.contextmanager
def patched(mimo: bool, regime: str, fields: dict | None = None, thresholds: dict | None = None,
            hold: bool = False):
    """The step's defaults for (mimo, regime) with `fields` replaced, and module thresholds set, inside; `hold`:
    every launch inside takes `regime` (the step's `launch_regime` answers it whatever the batch)."""
    key = (mimo, regime)
    fields = dict(fields or {})
    if "rows" in fields:  # rows=N means the tile's rows, for a Mamba-3 fp32 state too (unless angle_rows is given)
        fields.setdefault("angle_rows", None)
    saved = stepmod.DEFAULT_CONFIG[key]
    saved_regime = stepmod.launch_regime
    saved_thresholds = {name: getattr(stepmod, name) for name in (thresholds or {})}
    stepmod.DEFAULT_CONFIG[key] = saved._replace(**(fields or {}))
    for name, value in (thresholds or {}).items():
        setattr(stepmod, name, value)
    if hold:
        stepmod.launch_regime = lambda programs, sms, many_from=None: regime
    try:
        yield stepmod.DEFAULT_CONFIG[key]
    finally:
        stepmod.DEFAULT_CONFIG[key] = saved
        stepmod.launch_regime = saved_regime
        for name, value in saved_thresholds.items():
            setattr(stepmod, name, value)


@contextlib.contextmanager
def patched_all(mimo: bool, fields: dict):
    """`patched` for every regime of this MIMO-ness at once, the step still picking its regime."""
    with contextlib.ExitStack() as stack:
        for regime in REGIMES:
            stack.enter_context(patched(mimo, regime, fields))
        yield


def parse_model(text: str) -> tuple[str, str | None]:
    """`PRESET[:STATE_DTYPE]` → (preset, state dtype or None); ValueError for an unknown preset or dtype."""
    from model.config import get_config

    name, _, dtype = text.partition(":")
    try:
        get_config(name)
    except KeyError as exc:  # UnknownPresetError names the valid presets
        raise ValueError(exc.args[0]) from None
    if dtype and dtype not in ("float32", "bfloat16"):
        raise ValueError(f"{text!r}: the state dtype after ':' is float32 or bfloat16, got {dtype!r}")
    return name, dtype or None


def _model(name: str, state_dtype: str | None):
    """Preset `name` on the GPU at bf16 with the Triton kernels, its SSM state in `state_dtype` (None: the preset's)."""
    from model.config import get_config
    from model.factory import build_model

    cfg = get_config(name)
    if state_dtype:
        cfg = dataclasses.replace(cfg, state_dtype=state_dtype)
    return build_model(cfg, device="cuda", dtype=torch.bfloat16, impl="triton", seed=0)


def time_models(models: list[tuple[str, str | None]], batches: list[int], variants: list[tuple[str, dict]],
                mimo: bool, rounds: int = 3) -> None:
    """Whole-model decode at 768 tokens for each model and batch, every variant patched into every regime in turn,
    `rounds` times; prints the best of each and its ratio to the first (the default)."""
    from kernels.bench_model import time_decode_ms

    for name, dtype in models:
        model = _model(name, dtype)
        for b in batches:
            best: dict[str, float] = {}
            for _ in range(rounds):
                for label, fields in variants:
                    with patched_all(mimo, fields):
                        ms = time_decode_ms(model, b, 768)
                    best[label] = min(best.get(label, ms), ms)
            first = next(iter(best.values()))
            shown = f"{name}:{dtype}" if dtype else name
            print(f"whole {shown} b{b:4d} c768 " + "  ".join(f"{label}: {ms:.3f} ms ({ms / first:.3f})"
                                                         for label, ms in best.items()), flush=True)
        del model
        torch.cuda.empty_cache()


def _layer_case(b: int, R: int, ssm_dtype: torch.dtype):
    from kernels.bench import H, N, P, S, _fused_args
    from kernels.mamba3.testing import random_state

    state = random_state(b, H, P, N, S, R, device="cuda", dtype=torch.bfloat16, ssm_dtype=ssm_dtype)
    proj, kw = _fused_args(b, R)
    return state, functools.partial(step_fused_call, proj, kw)


def step_fused_call(proj, kw, state):
    return stepmod.step_fused(proj, **kw, state=state)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rank", type=int, choices=sorted(MODELS), default=4)
    ap.add_argument("--batch", type=int, nargs="+", default=[128, 32])
    ap.add_argument("--state", choices=sorted(STATES), nargs="+", default=["fp32"])
    ap.add_argument("--regime", choices=REGIMES, help="patch this regime's defaults (default: the batch's)")
    ap.add_argument("--variant", action="append", default=[], help="field=value[,field=value…] (repeatable)")
    ap.add_argument("--threshold-tma", type=int, help="MIMO_TMA_MANY_PROGRAMS_PER_SM as one more variant")
    ap.add_argument("--threshold-bf16", type=int, help="MIMO_BF16_TMA_PROGRAMS_PER_SM as one more variant")
    ap.add_argument("--threshold-bf16-many", type=int, help="MIMO_BF16_MANY_PROGRAMS_PER_SM as one more variant")
    ap.add_argument("--whole", action="store_true", help="also the whole 1.5B model at each batch, context 768")
    ap.add_argument("--models", nargs="+", metavar="PRESET[:STATE_DTYPE]",
                    help="instead, these whole models, every regime patched, the step picking its own")
    args = ap.parse_args(argv)
    try:
        variants = [("default", {}, {})] + [(v, parse_variant(v), {}) for v in args.variant]
        models = [parse_model(m) for m in args.models or []]
    except ValueError as exc:
        ap.error(str(exc))
    thresholds = (args.threshold_tma, args.threshold_bf16, args.threshold_bf16_many)
    if models and (any(t is not None for t in thresholds) or args.regime or args.whole):
        ap.error("--models takes variants only (no thresholds, --regime or --whole)")
    for flag, name in (("threshold_tma", "tma"), ("threshold_bf16", "bf16"), ("threshold_bf16_many", "bf16_many")):
        if getattr(args, flag) is not None:
            variants.append((f"{THRESHOLDS[name]}={getattr(args, flag)}", {}, {THRESHOLDS[name]: getattr(args, flag)}))
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 1
    if models:
        time_models(models, args.batch, [(label, fields) for label, fields, _ in variants], args.rank > 1)
        return 0
    from kernels.bench import time_graph_ms

    from kernels.bench import H

    mimo, sms = args.rank > 1, stepmod.sm_count(torch.device("cuda"))
    regimes = {}  # (state, batch) → the regime patched and held, the whole model's too
    print(f"{torch.cuda.get_device_name()}, {sms} SMs; rank {args.rank}; layer µs from a CUDA graph")
    for state_name in args.state:
        for b in args.batch:
            state0, call = _layer_case(b, args.rank, STATES[state_name])
            regime = regimes[state_name, b] = args.regime or stepmod.pick_regime(args.rank, state0.ssm, b * H, sms)
            want = None
            for label, fields, thresholds in variants:
                shown = "auto" if thresholds else regime
                with patched(mimo, regime, fields, thresholds, hold=not thresholds) as cfg:
                    state = ScanState(*(t.clone() for t in state0))
                    try:
                        us = time_graph_ms(lambda: call(state)) * 1e3
                    except Exception as exc:  # noqa: BLE001 - a variant that does not build is reported
                        if want is None:
                            raise  # the default itself: nothing to compare against
                        print(f"{state_name} b{b:4d} {shown:4s} {label:40s} {type(exc).__name__}: {exc}"[:160])
                        continue
                    state = ScanState(*(t.clone() for t in state0))
                    got = (call(state).float(), state.ssm.float())
                want = want or got
                ok = all(torch.allclose(g, w, rtol=2e-2, atol=2e-2) for g, w in zip(got, want))
                print(f"{state_name} b{b:4d} {shown:4s} {label:40s} {us:8.1f} µs"
                      f"{'' if ok else '  OUTPUT DIFFERS FROM THE DEFAULT'}  ({cfg})", flush=True)
    if args.whole:
        from kernels.bench_model import time_decode_ms

        for state_name in args.state:  # the bf16 twin is built once, not after an fp32 model
            model = _model(MODELS[args.rank], "float32" if state_name == "fp32" else "bfloat16")
            for b in args.batch:
                regime = regimes[state_name, b]
                for label, fields, thresholds in variants:
                    with patched(mimo, regime, fields, thresholds, hold=not thresholds):
                        ms = min(time_decode_ms(model, b, 768) for _ in range(3))
                    shown = "auto" if thresholds else regime
                    print(f"whole {MODELS[args.rank]} {state_name} b{b:4d} c768 {shown:4s} {label:40s} {ms:8.3f} ms",
                          flush=True)
            del model
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
