"""Measurement frames for the planner tests, written through store.repo so the columns are the real ones."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from app.planning.workloads import SLO, Workload
from store import db, repo

H100 = dict(identity="GPU-test-h100", kind="gpu", name="NVIDIA H100 80GB HBM3", memory_bytes=80_000_000_000,
            datasheet_key="H100-SXM")


def spec(preset: str, *, family: str = "transformer", weight_bytes: int = 2_000_000_000, state_bytes_fixed: int = 0,
         kv_bytes_per_token: int = 0, max_context: int = 131_072, param_count: int = 1_000_000_000) -> dict:
    return dict(preset=preset, family=family, config={"name": preset}, param_count=param_count,
                weight_bytes=weight_bytes, state_bytes_fixed=state_bytes_fixed, kv_bytes_per_token=kv_bytes_per_token,
                max_context=max_context)


def point(preset: str, phase: str, batch: int, length: int, latency_ms: float, *, power_w: float | None = None,
          nbytes: float | None = None, flops: float | None = None, oom: bool = False) -> dict:
    """One measured point; `length` is the prompt (prefill) or the context held (decode)."""
    return dict(preset=preset, phase=phase, dtype="bfloat16", implementation="test", batch=batch,
                prompt_len=length if phase == "prefill" else 0, context_len=length if phase == "decode" else 0,
                latency_p50_ms=None if oom else latency_ms, n_samples=10, oom=oom, mean_power_w=power_w,
                bytes_moved=nbytes if nbytes is not None else 1e9 + 1e6 * batch * length,
                flops=flops if flops is not None else 2e9 * batch * (length if phase == "prefill" else 1))


def write_store(path: Path, *, specs: list[dict], points: list[dict], device: dict = H100,
                extra_devices: tuple[dict, ...] = ()) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A SQLite store at `path` with one done run; returns (measurements, models, devices) as the app reads them."""
    url = f"sqlite:///{path}"
    with db.session(url) as s:
        dev = repo.upsert_device(s, **device)
        for d in extra_devices:
            repo.upsert_device(s, **d)
        ids = {sp["preset"]: repo.upsert_model_spec(s, **sp).id for sp in specs}
        run = repo.create_run(s, request={"test": True}, label="test", status="running", git_revision="t")
        rows = []
        for i, p in enumerate(points):
            p = dict(p)
            preset = p.pop("preset")
            rows.append(dict(run_id=run.id, device_id=dev.id, model_id=ids[preset], point_key=f"{i}", **p))
        repo.add_measurements(s, rows=rows)
        repo.update_run(s, run_id=run.id, status="done", device_id=dev.id)
        out = repo.read_measurements(s), repo.read_models(s), repo.read_devices(s)
    db.dispose_all()
    return out


def workload(**overrides) -> Workload:
    base = dict(name="t", kind="chat", calls_per_task=1, system_prompt_tokens=0, tokens_per_call=1000,
                output_tokens_per_call=101, tasks_per_day=86_400 * 10, peak_factor=2.0, serving="no-reuse",
                slo=SLO())
    base.update(overrides)
    return Workload(**base)


def flat_store(path: Path, *, kv_bytes_per_token: int = 1000, power: bool = True):
    """A model whose decode step is 10 ms and whose prefill is 100 ms everywhere in its grid.

    Decode measured at batch 1 and 64 over 100 and 10,000 tokens; prefill at batch 1 over the same lengths.
    Weights 2e9 bytes; power 300 W in decode, 500 W in prefill.
    """
    decode_w, prefill_w = (300.0, 500.0) if power else (None, None)
    pts = [point("flat", "decode", b, c, 10.0, power_w=decode_w) for b in (1, 64) for c in (100, 10_000)]
    pts += [point("flat", "prefill", 1, c, 100.0, power_w=prefill_w) for c in (100, 10_000)]
    return write_store(path, specs=[spec("flat", weight_bytes=2_000_000_000, kv_bytes_per_token=kv_bytes_per_token)],
                       points=pts)
