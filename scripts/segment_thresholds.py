"""Whole-model prefill under other segmentation thresholds: how `kernels.mamba3.segmented`'s rule was set.

    python scripts/segment_thresholds.py [--models M ...] [--batch B] [--tokens T ...]
                                          [--thresholds MIN_TOKENS/MIN_SEGMENT ...]

For each model (Triton path, bf16, seeded weights) and prompt length, one prefill of `--batch` sequences is
timed from a CUDA graph, as the profiler times it (`kernels.bench_model.time_prefill_ms`), with
`segmented.MIN_SEGMENTED_TOKENS` / `MIN_SEGMENT_TOKENS` set to each pair in turn; the segment count the
rule then gives is printed beside each time. Two segments of a rank-1 scan also wait for
`MIN_TWO_SEGMENT_TOKENS`, unless `--two-segments-from` sets it (0: no wait). Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import torch  # noqa: E402

DEFAULT_MODELS = ["mamba3-siso-1.5b", "mamba3-mimo-1.5b", "mamba2-1.5b", "hybrid-1.5b"]


def _pair(text: str) -> tuple[int, int]:
    """'4096/1024' → (4096, 1024)."""
    first, slash, second = text.partition("/")
    if not (slash and first.isdecimal() and second.isdecimal() and int(second) > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not MIN_TOKENS/MIN_SEGMENT, e.g. 512/128")
    return int(first), int(second)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tokens", nargs="+", type=int, default=[512, 1024, 2048, 4096])
    ap.add_argument("--thresholds", nargs="+", type=_pair, default=[(4096, 1024), (512, 128)],
                    help="MIN_SEGMENTED_TOKENS/MIN_SEGMENT_TOKENS pairs (default: 4096/1024 512/128)")
    ap.add_argument("--two-segments-from", type=int, default=None,
                    help="MIN_TWO_SEGMENT_TOKENS for these runs (default: the module's)")
    args = ap.parse_args(argv)
    if args.batch < 1 or min(args.tokens) < 1:
        ap.error("--batch and --tokens must be positive")
    from model.config import PRESETS

    unknown = [m for m in args.models if m not in PRESETS]
    if unknown:
        ap.error(f"unknown model preset(s) {', '.join(unknown)}; known: {', '.join(sorted(PRESETS))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("segment_thresholds.py needs a CUDA GPU", file=sys.stderr)
        return 2
    from kernels.bench_model import time_prefill_ms
    from kernels.mamba3 import segmented
    from model.factory import build_model

    saved = (segmented.MIN_SEGMENTED_TOKENS, segmented.MIN_SEGMENT_TOKENS, segmented.MIN_TWO_SEGMENT_TOKENS)
    print(f"{torch.cuda.get_device_name()}; batch {args.batch}; p50 ms (segments) per MIN_TOKENS/MIN_SEGMENT")
    try:
        if args.two_segments_from is not None:
            segmented.MIN_TWO_SEGMENT_TOKENS = args.two_segments_from
        for name in args.models:
            model = build_model(name, device="cuda", dtype=torch.bfloat16, impl="triton", seed=0)
            cfg = model.config
            for T in args.tokens:
                cells = []
                for min_tokens, min_segment in args.thresholds:
                    segmented.MIN_SEGMENTED_TOKENS, segmented.MIN_SEGMENT_TOKENS = min_tokens, min_segment
                    n = (segmented.auto_segments(args.batch, T, cfg.nheads, "cuda", rank=getattr(cfg, "mimo_rank", 1))
                         if hasattr(cfg, "nheads") else 1)
                    ms, note = time_prefill_ms(model, args.batch, T)
                    cells.append(f"{min_tokens}/{min_segment}: {ms:8.3f} ({n}){note}")
                print(f"{name:18s} {args.batch}x{T:<6d} " + " | ".join(cells), flush=True)
            del model
            torch.cuda.empty_cache()
    finally:
        (segmented.MIN_SEGMENTED_TOKENS, segmented.MIN_SEGMENT_TOKENS,
         segmented.MIN_TWO_SEGMENT_TOKENS) = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
