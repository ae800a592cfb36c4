"""Check the published Mamba-3 press claims with the planner's memory model and latency surfaces.

    python -m app.planning.claims                # on the analytic stand-in (labelled as such)
    python -m app.planning.claims --db URL       # on a store's measurements

Claim 1: a Transformer on a 16 GB card runs out of memory around 4k tokens where Mamba reaches 32k.
Claim 2: Mamba-3 is ~7× faster than Llama-3.2-1B (vLLM) at 16k tokens on an H100, near parity at 512
(the paper's workload: batch 128, prefill n tokens, then decode n tokens).
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pandas as pd

from app.planning.capacity import (
    USABLE_MEMORY_FRACTION,
    WORKSPACE_BYTES,
    max_concurrency_by_memory,
    max_context_by_memory,
)
from app.planning.subjects import Measured, measured_sets
from app.planning.surfaces import LABELS, worst_label
from store.datasheets import DATASHEETS

# Transformers of other sizes, from their public config.json (bf16 weights, bf16 KV):
# Llama-3.2-3B: 28 layers, 8 KV heads × 128 → 2·28·8·128·2 = 114,688 B/token; 3.21e9 parameters.
# Llama-2-7B: 32 layers, 32 KV heads × 128 → 2·32·32·128·2 = 524,288 B/token; 6.74e9 parameters.
OTHER_TRANSFORMERS = (("Llama-3.2-3B (config)", 6.43e9, 0, 114_688), ("Llama-2-7B (config)", 13.48e9, 0, 524_288))
PAPER_N = (512, 1024, 2048, 4096, 16384)
PAPER_BATCH = 128
PAPER_SECONDS = {  # Mamba-3 blog, prefill+decode at batch 128, H100-SXM
    "vLLM Llama-3.2-1B": (4.45, 9.60, 20.37, 58.64, 976.50),
    "Mamba-3 SISO 1.5B": (4.39, 8.78, 17.57, 35.11, 140.61),
}


def memory_claim(sets: list[Measured], *, cards: tuple[str, ...] = ("T4",),
                 usable_fraction: float = USABLE_MEMORY_FRACTION,
                 workspace_bytes: float = WORKSPACE_BYTES) -> pd.DataFrame:
    """Per model and 16 GB card: sequences that fit at 4k and 32k tokens, longest context at batch 1/8/64."""
    models = {(m.preset, m.family): (m.weight_bytes, m.state_bytes_fixed, m.kv_bytes_per_token) for m in sets}
    rows = []
    entries = [(f"{p} ({f})", *v) for (p, f), v in models.items()] + list(OTHER_TRANSFORMERS)
    for card in cards:
        mem = DATASHEETS[card].memory_bytes
        for name, weight, fixed, kv in entries:
            row = dict(card=card, model=name, weight_gib=weight / 2**30)
            for ctx in (4096, 32768):
                row[f"max_batch_at_{ctx // 1024}k"] = max_concurrency_by_memory(
                    memory_bytes=mem, weight_bytes=weight, state_bytes=fixed + kv * ctx,
                    usable_fraction=usable_fraction, workspace_bytes=workspace_bytes)
            for b in (1, 8, 64):
                c = max_context_by_memory(memory_bytes=mem, weight_bytes=weight, state_bytes_fixed=fixed,
                                          kv_bytes_per_token=kv, concurrency=b, usable_fraction=usable_fraction,
                                          workspace_bytes=workspace_bytes)
                row[f"max_context_at_batch_{b}"] = c if math.isinf(c) else int(c)
            rows.append(row)
    return pd.DataFrame(rows)


def _paper_run(m: Measured, n: int, memory_bytes: float) -> dict:
    """Seconds for `PAPER_BATCH` sequences: prefill n tokens, then n decode steps, in waves that fit memory."""
    fits = max_concurrency_by_memory(memory_bytes=memory_bytes, weight_bytes=m.weight_bytes,
                                     state_bytes=m.state_bytes_fixed + m.kv_bytes_per_token * 2 * n)
    per_wave = min(PAPER_BATCH, fits)
    if per_wave < 1:
        return dict(model=m.preset, n=n, waves=0, batch_per_wave=0, prefill_s=math.nan, decode_s=math.nan,
                    total_s=math.nan, provenance="does not fit")
    waves = [per_wave] * (PAPER_BATCH // per_wave) + ([PAPER_BATCH % per_wave] if PAPER_BATCH % per_wave else [])
    prefill_s = decode_s = 0.0
    labels = []
    ctx = np.linspace(n + 1, 2 * n - 1, 9)
    for b in waves:
        p, lp = m.prefill.latency_ms(b, n)
        d, ld = m.decode.latency_ms(b, ctx)
        prefill_s += float(p[0]) / 1e3
        decode_s += float((d[:-1] + d[1:]).mean() / 2 * (n - 1)) / 1e3  # trapezoid mean step × steps
        labels += [worst_label(lp), worst_label(ld)]
    return dict(model=m.preset, n=n, waves=len(waves), batch_per_wave=per_wave, prefill_s=prefill_s, decode_s=decode_s,
                total_s=prefill_s + decode_s, provenance=LABELS[worst_label(labels)])


def paper_workload(sets: list[Measured], *, transformer: str, ssm: str, gpu: str) -> pd.DataFrame:
    """The paper's batch-128 prefill+decode workload for two measured models on one GPU, and their ratio."""
    by = {(m.preset, m.gpu): m for m in sets}
    missing = [name for name in (transformer, ssm) if (name, gpu) not in by]
    if missing:
        have = ", ".join(f"{p} on {g}" for p, g in sorted(by)) or "none"
        raise ValueError(f"no measured decode and prefill for {' and '.join(missing)} on {gpu}; there are: {have}")
    t, s = by[(transformer, gpu)], by[(ssm, gpu)]
    rows = []
    for n in PAPER_N:
        a, b = _paper_run(t, n, t.memory_bytes), _paper_run(s, n, s.memory_bytes)
        rows.append(dict(n=n, transformer_s=a["total_s"], transformer_waves=a["waves"],
                         transformer_batch=a["batch_per_wave"], ssm_s=b["total_s"],
                         ratio_transformer_over_ssm=a["total_s"] / b["total_s"],
                         paper_ratio=PAPER_SECONDS["vLLM Llama-3.2-1B"][PAPER_N.index(n)]
                         / PAPER_SECONDS["Mamba-3 SISO 1.5B"][PAPER_N.index(n)],
                         provenance=max(a["provenance"], b["provenance"], key=_rank)))
    return pd.DataFrame(rows)


def _rank(label: str) -> int:
    return LABELS.index(label) if label in LABELS else len(LABELS)


def _memory_formatters() -> dict:
    """Whole tokens and sequences as such, an SSM's memory-unbounded context as words, GiB to two places."""
    def count(v) -> str:
        return "no memory limit" if math.isinf(v) else f"{int(v):,}"

    columns = [f"max_batch_at_{k}k" for k in (4, 32)] + [f"max_context_at_batch_{b}" for b in (1, 8, 64)]
    return {"weight_gib": lambda v: f"{v:,.2f}", **{c: count for c in columns}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", help="store URL or file; default: the analytic stand-in in memory")
    ap.add_argument("--gpu", default="H100-SXM")
    ap.add_argument("--transformer", default="llama-3.2-1b")
    ap.add_argument("--ssm", default="mamba3-siso-1.5b")
    args = ap.parse_args(argv)
    if args.db is None and args.gpu not in DATASHEETS:
        ap.error(f"--gpu {args.gpu!r}: the analytic stand-in knows {', '.join(DATASHEETS)}")
    from store import db, repo

    try:
        with db.session(args.db or "sqlite://") as s:
            if args.db is None:
                from app.planning.analytic import write_analytic_store

                write_analytic_store(s, gpu=args.gpu)
                print("source: ANALYTIC stand-in (roofline + anchor efficiencies), not measurements\n")
            df, models = repo.read_measurements(s), repo.read_models(s)
    except db.StoreError as exc:
        ap.exit(2, f"error: {exc}\n")
    sets, _ = measured_sets(df, dtype=None, models=None, weight_by_model={},
                            config_by_model=dict(zip(models["id"].astype(int), models["config"])))
    pd.set_option("display.width", 200)
    print("Claim 1 — a 16 GB card (T4; an RTX 4080 has the same 16 GB): usable 90 % less 2 GiB workspace; the "
          "longest contexts are memory's limit, not a model's position limit")
    print(memory_claim(sets).to_string(index=False, formatters=_memory_formatters()))
    print(f"\nClaim 2 — paper workload on {args.gpu}, batch {PAPER_BATCH}: prefill n, decode n (seconds)")
    try:
        table = paper_workload(sets, transformer=args.transformer, ssm=args.ssm, gpu=args.gpu)
    except ValueError as exc:
        ap.exit(2, f"error: {exc}\n")
    print(table.to_string(index=False, float_format=lambda v: f"{v:,.2f}"))


if __name__ == "__main__":
    main()
