"""Where a kernel's warps wait, instruction by instruction, from Nsight Compute's source page (CUDA only to take,
anywhere to read). Two commands:

    ncu --clock-control none -k regex:_step_kernel -s 3 -c 1 --section SourceCounters --section WarpStateStats \\
        --import-source no -o step python -m kernels.stall_report step --rank 4 --batch 128
    ncu -i step.ncu-rep --page source --csv --print-source sass > step.csv
    python -m kernels.stall_report read step.csv --top 30

`step` runs the fused decode step at the 1.5B head shapes six times (optionally under `kernels.bench_step_ab`
variants), for `ncu` to pick one launch. `read` prints the warp-stall samples by reason, the instructions that
hold the most samples with their main reasons, and each loop (a backward branch and the code it closes): its
instructions, the share of samples and of executed instructions it holds, and its opcode mix (docs/benchmarks.md,
twenty-seventh session, read the MIMO and SISO steps this way).
"""

from __future__ import annotations

import argparse
import csv
import io
import re
from collections import Counter
from dataclasses import dataclass, field

SAMPLES = "Warp Stall Sampling (All Samples)"
EXECUTED = "Instructions Executed"
_BRANCH = re.compile(r"\bBRA(?:\.\S+)?\s+(0x[0-9a-fA-F]+)")


@dataclass(frozen=True)
class Line:
    """One SASS instruction of the source page."""
    index: int
    address: int
    source: str
    samples: float
    executed: float
    stalls: dict[str, float] = field(default_factory=dict)  # reason (stall_ dropped) → samples

    @property
    def opcode(self) -> str:
        """The instruction's opcode without its predicate or modifiers ("@!P0 LDG.E.128 …" → "LDG")."""
        words = self.source.split()
        if words and words[0].startswith("@"):
            words = words[1:]
        return words[0].split(".")[0] if words else ""


def _number(text: str) -> float:
    text = text.strip().replace(",", "")
    if text in ("", "-"):
        return 0.0
    try:
        return float(text)
    except ValueError:
        return 0.0


def parse_source_csv(text: str) -> tuple[str, list[Line]]:
    """(kernel name, its instructions) from `ncu -i R --page source --csv --print-source sass` of one kernel;
    ValueError when the text is not that page."""
    rows = list(csv.reader(io.StringIO(text)))
    head = next((i for i, r in enumerate(rows) if "Address" in r and "Source" in r), None)
    if head is None:
        raise ValueError("not an Nsight Compute source page (--page source --csv): no Address/Source header")
    header = rows[head]
    missing = [c for c in (SAMPLES, EXECUTED) if c not in header]
    if missing:
        raise ValueError(f"the source page lacks {', '.join(missing)}: profile with --section SourceCounters")
    kernel = next((r[1] for r in rows[:head] if len(r) > 1 and r[0] == "Kernel Name"), "?")
    col = {h: i for i, h in enumerate(header)}
    reasons = [h for h in header if h.startswith("stall_") and not h.endswith("(Not Issued)")]
    lines = []
    for r in rows[head + 1:]:
        if len(r) < len(header) - 1 or not r[col["Address"]].startswith("0x"):
            continue
        lines.append(Line(index=len(lines), address=int(r[col["Address"]], 16), source=r[col["Source"]].strip(),
                          samples=_number(r[col[SAMPLES]]), executed=_number(r[col[EXECUTED]]),
                          stalls={h[6:]: _number(r[col[h]]) for h in reasons if _number(r[col[h]])}))
    if not lines:
        raise ValueError("the source page holds no instructions")
    return kernel, lines


def loops(lines: list[Line]) -> list[tuple[int, int, float]]:
    """(first, last, times taken) of every loop: a branch to an earlier address closes one from there to
    itself; the times it ran are its branch's executions."""
    at = {ln.address: ln.index for ln in lines}
    out = []
    for ln in lines:
        m = _BRANCH.search(ln.source)
        if m and int(m.group(1), 16) < ln.address and int(m.group(1), 16) in at and ln.executed:
            out.append((at[int(m.group(1), 16)], ln.index, ln.executed))
    return out


def report(kernel: str, lines: list[Line], top: int = 30) -> str:
    """The text `read` prints."""
    samples = sum(ln.samples for ln in lines) or 1.0
    executed = sum(ln.executed for ln in lines) or 1.0
    by_reason = Counter()
    for ln in lines:
        by_reason.update(ln.stalls)
    out = [f"{kernel}: {len(lines)} instructions, {executed:,.0f} executed (warp level), {samples:,.0f} stall samples",
           "samples by reason: " + ", ".join(f"{r} {v / samples:.1%}" for r, v in by_reason.most_common(8))]
    for first, last, taken in loops(lines):
        part = lines[first:last + 1]
        mix = Counter(ln.opcode for ln in part)
        out.append(f"loop {first}–{last}: {len(part)} instructions, taken {taken:,.0f} times, "
                   f"{sum(ln.samples for ln in part) / samples:.1%} of samples, "
                   f"{sum(ln.executed for ln in part) / executed:.1%} of executed; "
                   + " ".join(f"{op} {n}" for op, n in mix.most_common(12)))
    out.append(f"top {top} instructions by samples (index, share, instruction, main reasons):")
    for ln in sorted(lines, key=lambda x: -x.samples)[:top]:
        if not ln.samples:
            break
        why = ", ".join(f"{r} {v:.0f}" for r, v in sorted(ln.stalls.items(), key=lambda t: -t[1])[:3])
        out.append(f"{ln.index:5d} {ln.samples / samples:6.2%}  {ln.source[:72]:72s} {why}")
    return "\n".join(out)


def _step(rank: int, batch: int, state: str, variants: list[str]) -> None:
    import torch

    from kernels.bench_step_ab import STATES, _layer_case, parse_variant, patched
    from kernels.mamba3 import step as stepmod

    if not torch.cuda.is_available():
        raise SystemExit("`step` runs the decode step on a CUDA GPU, for ncu")
    fields = {}
    for v in variants:
        fields.update(parse_variant(v))
    st, call = _layer_case(batch, rank, STATES[state])
    regime = stepmod.pick_regime(rank, st.ssm, batch * 64, stepmod.sm_count(torch.device("cuda")))
    with patched(rank > 1, regime, fields):
        for _ in range(6):
            call(st)
    torch.cuda.synchronize()
    print(f"step rank {rank} batch {batch} {state} state, {regime} regime, {fields or 'defaults'}: 6 launches")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("step", help="run the fused decode step six times (under ncu)")
    st.add_argument("--rank", type=int, choices=(1, 4), default=4)
    st.add_argument("--batch", type=int, default=128)
    st.add_argument("--state", choices=("fp32", "bf16"), default="fp32")
    st.add_argument("--variant", action="append", default=[], help="StepLaunch field=value[,…] (bench_step_ab's)")
    rd = sub.add_parser("read", help="summarise ncu's source page (--page source --csv --print-source sass)")
    rd.add_argument("csv")
    rd.add_argument("--top", type=int, default=30)
    args = ap.parse_args(argv)
    if args.cmd == "step":
        _step(args.rank, args.batch, args.state, args.variant)
        return 0
    try:
        with open(args.csv, encoding="utf-8", errors="replace") as fh:
            kernel, lines = parse_source_csv(fh.read())
    except (OSError, ValueError) as exc:
        ap.error(str(exc))
    print(report(kernel, lines, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
