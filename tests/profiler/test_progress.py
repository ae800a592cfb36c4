"""The run's printed summary table."""

import pandas as pd

from profiler.progress import summary_table


def _frame(rows):
    base = dict(preset="m", phase="decode", batch=1, prompt_len=0, context_len=512, oom=False, implementation="triton",
                gpu_shared=False, latency_p10_ms=1.0, latency_p50_ms=1.1, latency_p90_ms=1.2, tokens_per_s=900.0,
                peak_mem_bytes=2**30, mbu=0.5, mfu=0.01, energy_per_token_j=None)
    return pd.DataFrame([{**base, **r} for r in rows])


def test_the_summary_flags_unsteady_points_and_says_what_to_do():
    text = summary_table(_frame([dict(), dict(context_len=1024, latency_p90_ms=1.6),
                                 dict(context_len=2048, oom=True, latency_p10_ms=None, latency_p90_ms=None),
                                 dict(context_len=4096, gpu_shared=True, latency_p90_ms=3.0)]))
    rows = {int(line.split()[3]): line for line in text.splitlines()[2:] if line.startswith("m ")}
    assert rows[512].endswith("triton") and rows[1024].endswith("triton · UNSTABLE")
    assert rows[2048].endswith("OUT OF MEMORY")
    assert rows[4096].endswith("triton · GPU SHARED · UNSTABLE")
    assert text.splitlines()[-1].startswith("2 point(s) UNSTABLE: their calls' p90 above 1.5× their p10")


def test_a_steady_summary_has_no_unstable_line():
    text = summary_table(_frame([dict(), dict(batch=16)]))
    assert "UNSTABLE" not in text and len(text.splitlines()) == 4
