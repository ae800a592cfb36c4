"""The tables the profiler writes and the app reads.

Units are in the column names (`_ms`, `_bytes`, `_w`, `_j`, `_per_s`); ratios (`mbu`, `mfu`, `progress`)
are 0–1 floats. Timestamps are timezone-aware UTC. Exact configs and requests are JSON columns.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

SCHEMA_VERSION = 1

RUN_STATUSES = ("queued", "running", "done", "failed", "cancelled")
PHASES = ("prefill", "decode")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _ts(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=nullable))


def _big(nullable: bool = True, **kw: Any) -> Any:
    """64-bit integers: byte counts overflow PostgreSQL's 32-bit INTEGER."""
    return Field(sa_column=Column(BigInteger, nullable=nullable), **kw)


def _json() -> Any:
    return Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Meta(SQLModel, table=True):
    """Key/value facts about the store itself: the schema version, when it was created."""

    __tablename__ = "ssmplan_meta"
    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=1024)


class Device(SQLModel, table=True):
    """A GPU (or the CPU) that measurements were taken on, with its measured and datasheet peaks."""

    __tablename__ = "devices"
    __table_args__ = (UniqueConstraint("identity", name="uq_devices_identity"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    identity: str = Field(max_length=256, description="stable key: GPU UUID, or host + CPU model")
    kind: str = Field(max_length=8, description="gpu | cpu")
    name: str = Field(max_length=256)
    host: str = Field(default="", max_length=256)
    index: Optional[int] = None
    memory_bytes: Optional[int] = _big(default=None)
    driver_version: Optional[str] = Field(default=None, max_length=64)
    cuda_version: Optional[str] = Field(default=None, max_length=64)
    compute_capability: Optional[str] = Field(default=None, max_length=16)
    sm_count: Optional[int] = None
    measured_copy_bw_bytes_per_s: Optional[float] = None
    measured_bf16_flops_per_s: Optional[float] = None
    datasheet_key: Optional[str] = Field(default=None, max_length=64)
    datasheet_bw_bytes_per_s: Optional[float] = None
    datasheet_bf16_flops_per_s: Optional[float] = None
    datasheet_tdp_w: Optional[float] = None
    created_at: Optional[datetime] = _ts()


class ModelSpec(SQLModel, table=True):
    """One exact model configuration (a preset, or a checkpoint folder's config)."""

    __tablename__ = "model_specs"
    __table_args__ = (UniqueConstraint("config_hash", name="uq_model_specs_config_hash"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    preset: str = Field(max_length=128, description="preset name, or the checkpoint folder's name")
    family: str = Field(max_length=32, description="mamba3-siso | mamba3-mimo | mamba2 | transformer | hybrid")
    source: str = Field(default="preset", max_length=512, description="preset | checkpoint:<folder>")
    config_hash: str = Field(max_length=64)
    config: dict = _json()
    param_count: int = _big(nullable=False)
    weight_bytes: int = _big(nullable=False)
    state_bytes_fixed: int = _big(nullable=False, description="per-sequence cache bytes that do not grow with context")
    kv_bytes_per_token: int = _big(nullable=False,
                                   description="per-sequence cache bytes per token of context (0 for SSMs)")
    max_context: int = _big(nullable=False)
    created_at: Optional[datetime] = _ts()


class Run(SQLModel, table=True):
    """A profiling request and its life: queued → running → done | failed | cancelled."""

    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("uid", name="uq_runs_uid"), Index("ix_runs_status", "status"))
    id: Optional[int] = Field(default=None, primary_key=True)
    uid: str = Field(max_length=64, description="globally unique id, kept across stores")
    label: str = Field(default="", max_length=256)
    request: dict = _json()
    status: str = Field(default="queued", max_length=16)
    progress: float = 0.0
    points_total: int = 0
    points_done: int = 0
    eta_s: Optional[float] = None
    device_id: Optional[int] = Field(default=None, foreign_key="devices.id")
    host: str = Field(default="", max_length=256)
    worker: Optional[str] = Field(default=None, max_length=256)
    pid: Optional[int] = None
    git_revision: Optional[str] = Field(default=None, max_length=64)
    versions: dict = _json()
    error: Optional[str] = None
    cancel_requested: bool = False
    attempts: int = 0
    created_at: Optional[datetime] = _ts()
    started_at: Optional[datetime] = _ts()
    finished_at: Optional[datetime] = _ts()
    heartbeat_at: Optional[datetime] = _ts()


class Measurement(SQLModel, table=True):
    """One measured point: a prefill of (batch, prompt) or one decode step at (batch, context)."""

    __tablename__ = "measurements"
    __table_args__ = (
        UniqueConstraint("run_id", "point_key", name="uq_measurements_point"),
        Index("ix_measurements_lookup", "device_id", "model_id", "phase"),
    )
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="runs.id")
    device_id: int = Field(foreign_key="devices.id")
    model_id: int = Field(foreign_key="model_specs.id")
    point_key: str = Field(max_length=256)
    phase: str = Field(max_length=16)
    dtype: str = Field(max_length=16)
    implementation: str = Field(max_length=64)
    batch: int
    prompt_len: int = 0
    context_len: int = 0
    gen_tokens: int = 0
    latency_p50_ms: Optional[float] = None
    latency_p10_ms: Optional[float] = None
    latency_p90_ms: Optional[float] = None
    n_samples: int = 0
    tokens_per_s: Optional[float] = None
    peak_mem_bytes: Optional[int] = _big(default=None)
    weight_bytes: Optional[int] = _big(default=None)
    state_bytes: Optional[int] = _big(default=None)
    bytes_moved: Optional[float] = None
    flops: Optional[float] = None
    achieved_bw_bytes_per_s: Optional[float] = None
    arithmetic_intensity: Optional[float] = None
    mbu: Optional[float] = None
    mfu: Optional[float] = None
    energy_j: Optional[float] = None
    energy_per_token_j: Optional[float] = None
    mean_power_w: Optional[float] = None
    oom: bool = False
    gpu_shared: bool = False
    hw_bytes: Optional[float] = None
    hw_flops: Optional[float] = None
    notes: Optional[str] = None
    created_at: Optional[datetime] = _ts()


class TelemetrySample(SQLModel, table=True):
    """NVML readings sampled off the hot path while a run measures."""

    __tablename__ = "telemetry"
    __table_args__ = (Index("ix_telemetry_run", "run_id", "t"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="runs.id")
    device_id: Optional[int] = Field(default=None, foreign_key="devices.id")
    t: Optional[datetime] = _ts(nullable=False)
    power_w: Optional[float] = None
    energy_j: Optional[float] = None
    sm_clock_mhz: Optional[float] = None
    mem_clock_mhz: Optional[float] = None
    gpu_util: Optional[float] = None
    mem_util: Optional[float] = None
    mem_used_bytes: Optional[int] = _big(default=None)
    temperature_c: Optional[float] = None
    throttle_reasons: Optional[int] = _big(default=None)
    other_processes: Optional[int] = None


class Price(SQLModel, table=True):
    """The price book: $/GPU-hour per GPU type and pricing tier, with its source and date."""

    __tablename__ = "prices"
    __table_args__ = (UniqueConstraint("gpu", "tier", name="uq_prices_gpu_tier"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    gpu: str = Field(max_length=64)
    tier: str = Field(max_length=32, description="on-demand | reserved | spot")
    usd_per_gpu_hour: float
    source: str = Field(default="", max_length=512)
    as_of: str = Field(default="", max_length=32, description="date of the price, ISO or YYYY-MM")
    updated_at: Optional[datetime] = _ts()


class Setting(SQLModel, table=True):
    """Small named values saved with the store (energy price, PUE, saved workloads as JSON)."""

    __tablename__ = "settings"
    key: str = Field(primary_key=True, max_length=128)
    value: Any = Field(default=None, sa_column=Column(JSON, nullable=True))
    updated_at: Optional[datetime] = _ts()


TABLES = (Meta, Device, ModelSpec, Run, Measurement, TelemetrySample, Price, Setting)
