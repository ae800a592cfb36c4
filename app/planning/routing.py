"""Routing: the cheapest architecture that meets the SLOs, why, where the answer flips, how robust it is.

`recommend` picks the row with the lowest $/task among the feasible, priced rows. A workload flagged
retrieval-heavy does not get a pure SSM when a Transformer or hybrid also meets the SLOs: at 1.5B the
Mamba-3 paper measures pure SSMs well below a Transformer on exact-recall tasks. Reasons compare the
choice with the cheapest feasible row of another family (else with the best row of another family
that failed, saying why it failed). When the next cheapest configuration costs at most `NEAR_TIE` (3 %)
more, a caveat names it as a tie on cost: re-measuring the same GPU moves points by about that much.

Crossovers scale the workload's context (prefix and per-call input, same shape, same output) over a
log grid and report, per GPU, the context length where the cheapest model changes, refined by
bisection. Sensitivity re-plans under price ±50 % (of the recommended GPU), output length ×0.5/×2 and
utilisation 40–90 %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import pandas as pd

from app.planning import whatif
from app.planning.pricing import PriceBook
from app.planning.workloads import Workload

SSM_FAMILIES = ("mamba3-siso", "mamba3-mimo", "mamba2")
RECALL_FAMILIES = ("transformer", "hybrid")
RETRIEVAL_CAVEAT = (
    "retrieval-heavy: pure SSMs recall distant tokens less exactly. At 1.5B the Mamba-3 paper reports "
    "SWDE 28.5 (Mamba-3 SISO) vs 48.9 (Transformer) and FDA 23.4 vs 58.4; check quality on your own data."
)
BISECT_STEPS = 6
MIB = 2**20
# Re-measuring a point on the same GPU has moved it by up to 2.7 % (docs/planner-notes.md), so a runner-up
# this close to the pick is a tie on cost: the recommendation says so instead of implying a clear winner.
NEAR_TIE = 0.03

Evaluate = Callable[..., pd.DataFrame]  # (workload, *, gpus=None, price_book=None, utilisation=None) -> rows


@dataclass(frozen=True)
class Recommendation:
    model: str
    family: str
    gpu: str
    tier: str
    usd_per_task: float
    usd_per_month: float
    gpus: int
    provenance: str
    reasons: tuple[str, ...]
    caveats: tuple[str, ...]

    def as_frame(self) -> pd.DataFrame:
        return pd.DataFrame([dict(model=self.model, family=self.family, gpu=self.gpu, tier=self.tier,
                                  usd_per_task=self.usd_per_task, usd_per_month=self.usd_per_month, gpus=self.gpus,
                                  provenance=self.provenance, reasons=" ".join(self.reasons),
                                  caveats=" ".join(self.caveats))])


def _ok(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["status"] == "ok"]


def no_recommendation_reason(rows: pd.DataFrame, w: Workload) -> str:
    if rows.empty:
        return "nothing to compare: no model has usable measurements"
    status = rows["status"]
    if (status == "no price").any() and not (status == "ok").any():
        gpus = ", ".join(sorted(rows.loc[status == "no price", "gpu"].unique()))
        return f"the configurations that meet the SLOs run on GPUs with no price in the book ({gpus}); add prices"
    ctx = rows[rows["bound_by"] == "context limit"]
    if len(ctx) == len(rows[rows["status"] == "infeasible"]) and len(ctx):
        longest = int(rows["max_context_tokens"].max())
        return (f"the task reaches {w.final_context_tokens:,} tokens of context; the longest any model supports is "
                f"{longest:,}: shorten the context or add a longer-context model")
    infeasible = rows[rows["status"] == "infeasible"]
    if len(infeasible):
        slo = infeasible[infeasible["ttft_ms"].notna()]
        if len(slo):
            closest = slo.sort_values("task_latency_p50_s").iloc[0]
            return (f"no configuration meets the SLOs; closest: {closest['model']} on {closest['gpu']}: "
                    f"{closest['reason']}")
        first = infeasible.iloc[0]
        return f"no configuration fits: {first['model']} on {first['gpu']}: {first['reason']}"
    return "no configuration has usable measurements: " + "; ".join(rows["reason"].astype(str).unique()[:3])


def _pct_less(a: float, b: float) -> str:
    """How much less a is than b, in words."""
    return f"{(1 - a / b) * 100:.0f}% less" if b > 0 else ""


def _arch_class(family: str) -> str:
    return "SSM" if family in SSM_FAMILIES else "attention"


def _rival(rows: pd.DataFrame, win: pd.Series) -> pd.Series | None:
    """What to explain the choice against: the other architecture class, same GPU first."""
    other_class = rows[rows["family"].map(_arch_class) != _arch_class(win["family"])]
    pool = other_class if len(other_class) else rows[rows["family"] != win["family"]]
    ok = _ok(pool)
    for cand in (ok[ok["gpu"] == win["gpu"]], ok):
        if len(cand):
            return cand.sort_values(["usd_per_task", "model"]).iloc[0]
    if len(pool):
        same = pool[pool["gpu"] == win["gpu"]]
        return (same if len(same) else pool).sort_values(["model", "gpu"]).iloc[0]
    return None


def _reasons(rows: pd.DataFrame, win: pd.Series, w: Workload) -> list[str]:
    out = [f"{win['model']} on {win['gpu']} costs ${win['usd_per_task']:.5f} per task "
           f"(${win['usd_per_1m_output_tokens']:.3f} per 1M output tokens) at {int(win['concurrency_per_gpu'])} "
           f"sequences per GPU, bound by {win['bound_by']}."]
    for family, g in rows[rows["family"] != win["family"]].groupby("family", sort=True):
        ok = _ok(g)
        if len(ok):
            best = ok.sort_values("usd_per_task").iloc[0]
            out.append(f"Best {family}: {best['model']} on {best['gpu']} at ${best['usd_per_task']:.5f} per task.")
        else:
            out.append(f"No {family} configuration qualifies ({g.iloc[0]['model']} on {g.iloc[0]['gpu']}: "
                       f"{g.iloc[0]['reason']}).")
    other = _rival(rows, win)
    if other is None or other["status"] != "ok":
        return out
    name = f"{other['model']}" + ("" if other["gpu"] == win["gpu"] else f" on {other['gpu']}")
    ctx = w.final_context_tokens
    if other["bound_by"] == "memory" and other["concurrency_per_gpu"] < win["concurrency_per_gpu"]:
        grows = other["family"] in RECALL_FAMILIES and other["state_bytes_per_seq"] > win["state_bytes_per_seq"]
        lead = "KV-cache growth" if grows else "Memory"
        out.append(f"{lead}: at {ctx:,} tokens each {other['model']} sequence holds "
                   f"{other['state_bytes_per_seq'] / MIB:,.1f} MiB vs {win['state_bytes_per_seq'] / MIB:,.1f} MiB, "
                   f"so memory caps {name} at {int(other['concurrency_per_gpu'])} sequences per GPU vs "
                   f"{int(win['concurrency_per_gpu'])}.")
    for phase, label in (("decode", "decode (memory-bound steps)"), ("prefill", "prefill")):
        a, b = win[f"{phase}_gpu_s_per_task"], other[f"{phase}_gpu_s_per_task"]
        if a > 0 and b > 0 and max(a / b, b / a) >= 1.2:
            faster = win["model"] if a < b else name
            out.append(f"GPU time per task in {label}: {a:.3f} s vs {b:.3f} s for {name} "
                       f"({faster} {max(a / b, b / a):.1f}× faster).")
    return out


def _what_if_line(what_ifs: pd.DataFrame, rows: pd.DataFrame, win: pd.Series) -> list[str]:
    """The cheapest what-if row, when it beats the recommendation, named beside it; when its smaller state
    packs more sequences per GPU than its fp32 twin in `rows`, so that each token takes longer while the
    task costs less, that is said too."""
    ok = _ok(what_ifs)
    if ok.empty:
        return []
    best = ok.sort_values(["usd_per_task", "model", "gpu"]).iloc[0]
    if best["usd_per_task"] >= win["usd_per_task"]:
        return []
    line = (f"What-if: {best['model']} on {best['gpu']} would cost ${best['usd_per_task']:.5f} per task "
            f"({_pct_less(best['usd_per_task'], win['usd_per_task'])}); its decode is projected from the fp32-state "
            "measurements, and a bf16 state drifts the logits by about 1 % over 4,096 steps.")
    fp32_name = str(best["model"]).split(f" · {whatif.LABEL}")[0]
    base = _ok(rows[(rows["model"] == fp32_name) & (rows["gpu"] == best["gpu"])])
    if len(base):
        b = base.iloc[0]
        if best["concurrency_per_gpu"] > b["concurrency_per_gpu"] and best["tpot_ms"] > b["tpot_ms"]:
            line += (f" Its half-size state packs {int(best['concurrency_per_gpu'])} sequences per GPU against "
                     f"{int(b['concurrency_per_gpu'])}, so each token takes {best['tpot_ms']:.1f} ms against "
                     f"{b['tpot_ms']:.1f} while the task costs less.")
    return [line]


def _near_tie(ranked: pd.DataFrame, win: pd.Series) -> list[str]:
    """A caveat naming the cheapest other configuration when it costs at most NEAR_TIE more than `win`."""
    others = ranked[(ranked["model"] != win["model"]) | (ranked["gpu"] != win["gpu"])]
    if others.empty or not win["usd_per_task"] > 0:
        return []
    rival = others.iloc[0]
    margin = rival["usd_per_task"] / win["usd_per_task"] - 1
    if not margin <= NEAR_TIE:  # NaN costs name no tie
        return []
    return [f"near tie: {rival['model']} on {rival['gpu']} costs ${rival['usd_per_task']:.6f} per task, "
            f"{max(margin, 0) * 100:.1f}% more, within the {NEAR_TIE * 100:.0f}% that re-measuring the same GPU "
            "moves a point; on cost the two are equal, so choose on quality, supply or headroom"]


def recommend(rows: pd.DataFrame, w: Workload, tier: str) -> tuple[Recommendation | None, str]:
    """The recommendation, or None and the reason there is none. What-if rows (whatif.py) are never
    recommended; the cheapest one is named beside the recommendation when it would cost less."""
    flagged = whatif.is_what_if(rows["model"])
    rows, what_ifs = rows[~flagged], rows[flagged]
    ok = _ok(rows)
    if ok.empty:
        return None, no_recommendation_reason(rows, w)
    ranked = ok.sort_values(["usd_per_task", "gpus_at_peak", "model", "gpu"])
    win = ranked.iloc[0]
    caveats: list[str] = []
    pre: list[str] = []
    if w.retrieval_heavy and win["family"] in SSM_FAMILIES:
        recall = ranked[ranked["family"].isin(RECALL_FAMILIES)]
        if len(recall):
            ssm = win
            win = recall.iloc[0]
            pre.append(f"Retrieval-heavy workload: {win['model']} is the cheapest Transformer/hybrid meeting the SLOs; "
                       f"the cheapest pure SSM ({ssm['model']} on {ssm['gpu']}) would cost "
                       f"{_pct_less(ssm['usd_per_task'], win['usd_per_task'])} per task.")
        else:
            caveats.append("no Transformer or hybrid meets the SLOs, so a pure SSM is recommended despite the "
                           "retrieval-heavy flag")
        caveats.append(RETRIEVAL_CAVEAT)
    # under the retrieval rule only Transformers and hybrids compete with a Transformer or hybrid pick
    recall_only = w.retrieval_heavy and win["family"] in RECALL_FAMILIES
    caveats.extend(_near_tie(ranked[ranked["family"].isin(RECALL_FAMILIES)] if recall_only else ranked, win))
    if win["provenance"] != "measured":
        caveats.append(f"the chosen figures are {win['provenance']}, not all measured")
    rec = Recommendation(model=str(win["model"]), family=str(win["family"]), gpu=str(win["gpu"]), tier=tier,
                         usd_per_task=float(win["usd_per_task"]), usd_per_month=float(win["usd_per_month"]),
                         gpus=int(win["gpus_billed"]), provenance=str(win["provenance"]),
                         reasons=tuple(pre + _reasons(rows, win, w) + _what_if_line(what_ifs, rows, win)),
                         caveats=tuple(caveats))
    return rec, ""


def _cheapest_by_gpu(rows: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """gpu → (model, provenance) of its cheapest feasible row."""
    out: dict[str, tuple[str, str]] = {}
    rows = rows[~whatif.is_what_if(rows["model"])]
    for r in _ok(rows).sort_values(["usd_per_task", "model"]).to_dict("records"):
        out.setdefault(str(r["gpu"]), (str(r["model"]), str(r["provenance"])))
    return out


def context_grid(w: Workload, longest: int) -> list[int]:
    low = max(512, 2 * w.calls_per_task * w.output_tokens_per_call)
    low = 1 << math.ceil(math.log2(low))
    grid = []
    x = low
    while x <= longest:
        grid.append(x)
        x *= 2
    return grid


def crossovers(w: Workload, evaluate: Evaluate, gpus: list[str], longest: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(crossover rows, the sweep behind them: gpu, context_tokens, model, usd_per_task, status)."""
    cols = ["gpu", "context_tokens", "cheaper_below", "cheaper_above", "why", "provenance"]
    grid = context_grid(w, longest)
    if len(grid) < 2 or not gpus:
        sweep_cols = ["gpu", "context_tokens", "model", "usd_per_task", "status"]
        return pd.DataFrame(columns=cols), pd.DataFrame(columns=sweep_cols)
    sweep, winners = [], []
    for L in grid:
        rows = evaluate(w.with_final_context(L), gpus=gpus)
        sweep.append(rows.assign(context_tokens=L)[["gpu", "context_tokens", "model", "usd_per_task", "status"]])
        winners.append(_cheapest_by_gpu(rows))
    out = []
    for gpu in gpus:
        for i in range(len(grid) - 1):
            a, b = winners[i].get(gpu), winners[i + 1].get(gpu)
            if a is None or b is None or a[0] == b[0]:
                continue
            lo, hi = grid[i], grid[i + 1]
            for _ in range(BISECT_STEPS):
                mid = int(round(math.sqrt(lo * hi)))
                m = _cheapest_by_gpu(evaluate(w.with_final_context(mid), gpus=[gpu])).get(gpu)
                if m is not None and m[0] == a[0]:
                    lo = mid
                else:
                    hi = mid
            above = evaluate(w.with_final_context(hi), gpus=[gpu])
            was = above[above["model"] == a[0]].iloc[0]
            why = ("cost" if was["status"] == "ok" else f"{a[0]} stops qualifying: {was['reason'] or was['status']}")
            out.append(dict(gpu=gpu, context_tokens=int(round(math.sqrt(lo * hi))), cheaper_below=a[0],
                            cheaper_above=b[0], why=why, provenance=max(a[1], b[1], key=_rank)))
    return pd.DataFrame(out, columns=cols), pd.concat(sweep, ignore_index=True)


def _rank(label: str) -> int:
    return ("measured", "interpolated", "extrapolated", "projected").index(label)


def sensitivity(w: Workload, evaluate: Evaluate, book: PriceBook, base: Recommendation, tier: str,
                utilisation: float) -> pd.DataFrame:
    """Long table: scenario × model × GPU with $/task, the scenario's recommendation, and whether it moved."""
    scenarios = [
        ("base", w, book, utilisation),
        (f"price of {base.gpu} −50%", w, book.scaled(0.5, (base.gpu,)), utilisation),
        (f"price of {base.gpu} +50%", w, book.scaled(1.5, (base.gpu,)), utilisation),
        ("output ×0.5", w.with_output_scale(0.5), book, utilisation),
        ("output ×2", w.with_output_scale(2.0), book, utilisation),
        *[(f"utilisation {u:.0%}", w, book, u) for u in (0.4, 0.6, 0.9)],
    ]
    frames = []
    for name, wl, pb, u in scenarios:
        rows = evaluate(wl, price_book=pb, utilisation=u)
        rec, _ = recommend(rows, wl, tier)
        f = rows[["model", "family", "gpu", "usd_per_task", "status"]].copy()
        f.insert(0, "scenario", name)
        f["feasible"] = f["status"] == "ok"
        f["recommended"] = (rec is not None) & (f["model"] == (rec.model if rec else "")) & (
            f["gpu"] == (rec.gpu if rec else ""))
        f["recommended_changes"] = rec is None or (rec.model, rec.gpu) != (base.model, base.gpu)
        frames.append(f.drop(columns="status"))
    return pd.concat(frames, ignore_index=True)
