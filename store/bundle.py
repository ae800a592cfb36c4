"""Runs with their devices, models, measurements and telemetry as one portable JSON document.

The shipped reference dataset (`data/reference/*.json`) is such a bundle: it carries full provenance and
is loaded into a new store on first start. Rows refer to each other by stable keys (device identity,
model config hash, run uid), never by a store's own ids, so importing is idempotent.
"""

from __future__ import annotations

import json
import math
import os
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from store import repo
from store.db import PROJECT_ROOT
from store.models import PHASES, RUN_STATUSES, Device, Measurement, ModelSpec, Run, TelemetrySample, utcnow

FORMAT = "ssmplan-bundle"
FORMAT_VERSION = 1
REFERENCE_DIR = PROJECT_ROOT / "data" / "reference"
ARCHIVE_DIR = PROJECT_ROOT / "data" / "archive"  # reference bundles a newer release replaced
REFERENCE_ENV = "SSMPLAN_REFERENCE_DIR"  # another folder of bundles to seed new stores from (tests: an empty one)
_SEEDED_KEY = "reference_bundles_loaded"
_RETIRED_KEY = "reference_bundles_retired"


class BundleError(ValueError):
    pass


def _row(obj, drop: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for k, v in obj.model_dump().items():
        if k in drop:
            continue
        out[k] = v.isoformat() if isinstance(v, datetime) else v
    return out


def _parse_ts(row: dict, *names: str) -> dict:
    for n in names:
        if isinstance(row.get(n), str):
            row[n] = datetime.fromisoformat(row[n])
    return row


def _made_at(run: dict) -> datetime:
    """When a bundle's run was created, for ordering (naive times are UTC; a missing or unreadable time first)."""
    try:
        t = datetime.fromisoformat(str(run.get("created_at")))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def export_runs(s: Session, *, run_ids: list[int]) -> dict:
    run_ids = list(dict.fromkeys(run_ids))  # a run named twice is exported once
    runs = [s.get(Run, i) for i in run_ids]
    missing = [i for i, r in zip(run_ids, runs) if r is None]
    if missing:
        raise BundleError(f"no run(s) with id {missing}")
    meas = s.exec(select(Measurement).where(Measurement.run_id.in_(run_ids)).order_by(Measurement.id)).scalars().all()
    tele = s.exec(select(TelemetrySample).where(TelemetrySample.run_id.in_(run_ids))
                  .order_by(TelemetrySample.id)).scalars().all()
    dev_ids = {r.device_id for r in runs if r.device_id} | {m.device_id for m in meas}
    model_ids = {m.model_id for m in meas}
    devices = {i: s.get(Device, i) for i in dev_ids}
    models = {i: s.get(ModelSpec, i) for i in model_ids}
    uid = {r.id: r.uid for r in runs}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "exported_at": utcnow().isoformat(),
        "devices": [_row(d, ("id",)) for d in devices.values()],
        "models": [_row(m, ("id",)) for m in models.values()],
        "runs": [
            {**_row(r, ("id", "device_id")), "device": devices[r.device_id].identity if r.device_id else None}
            for r in runs
        ],
        "measurements": [
            {**_row(m, ("id", "run_id", "device_id", "model_id")), "run": uid[m.run_id],
             "device": devices[m.device_id].identity, "model": models[m.model_id].config_hash}
            for m in meas
        ],
        "telemetry": [
            {**_row(t, ("id", "run_id", "device_id")), "run": uid[t.run_id],
             "device": devices[t.device_id].identity if t.device_id else None}
            for t in tele
        ],
    }


SECTIONS = ("devices", "models", "runs", "measurements", "telemetry")


def _check_bundle(bundle: Any) -> None:
    """A BundleError, before anything is written, for a document that is not a whole bundle: the marker,
    a version this ssmplan reads, every section a list of objects, every reference to a device, model or
    run resolvable inside the bundle."""
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
        raise BundleError("not an ssmplan bundle (missing format marker)")
    try:
        version = int(bundle.get("format_version", 0))
    except (TypeError, ValueError):
        raise BundleError(f"unreadable bundle format version {bundle.get('format_version')!r}") from None
    if version > FORMAT_VERSION:
        raise BundleError(f"bundle format {version} is newer than this ssmplan reads ({FORMAT_VERSION})")
    for name in SECTIONS:
        rows = bundle.get(name)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise BundleError(f"the bundle's {name!r} section is missing or not a list of objects")
    keys = {"devices": "identity", "models": "config_hash", "runs": "uid"}
    known = {}
    for name, key in keys.items():
        missing = [i for i, r in enumerate(bundle[name]) if not r.get(key)]
        if missing:
            raise BundleError(f"{name} entry {missing[0]} has no {key!r}")
        known[name] = {r[key] for r in bundle[name]}
    refs = {"runs": ("device",), "measurements": ("run", "device", "model"), "telemetry": ("run", "device")}
    target = {"run": "runs", "device": "devices", "model": "models"}
    for name, fields in refs.items():
        for i, r in enumerate(bundle[name]):
            for f in fields:
                nullable = f == "device" and name != "measurements"
                if (r.get(f) is None and not nullable) or (r.get(f) is not None and r[f] not in known[target[f]]):
                    raise BundleError(f"{name} entry {i} refers to {f} {r.get(f)!r}, which the bundle does not hold")
    _check_values(bundle)


LATENCIES = ("latency_p50_ms", "latency_p10_ms", "latency_p90_ms")
LEAST = {"batch": 1, "prompt_len": 0, "context_len": 0, "gen_tokens": 0}  # counts, and the least each may be


def _check_values(bundle: dict) -> None:
    """A BundleError naming the entry and field for a value no measurement can have: a status or phase this
    ssmplan does not know, a count that is not a whole number at least its least, a latency that is not a
    finite number above 0, or two different entries for one run or for one point of a run (an entry listed
    twice, the same both times, is one entry)."""
    runs: dict[str, int] = {}
    for i, r in enumerate(bundle["runs"]):
        if r.get("status", "queued") not in RUN_STATUSES:
            raise BundleError(f"runs entry {i} (run {r['uid']}): status {r.get('status')!r} is not one of "
                              f"{', '.join(RUN_STATUSES)}")
        j = runs.setdefault(r["uid"], i)
        if bundle["runs"][j] != r:
            raise BundleError(f"runs entries {j} and {i} are two different runs with uid {r['uid']}")
    points: dict[tuple, int] = {}
    for i, m in enumerate(bundle["measurements"]):
        where = f"measurements entry {i} (run {m['run']}, point {m.get('point_key')!r})"
        if not isinstance(m.get("point_key"), str) or not m["point_key"]:
            raise BundleError(f"{where}: has no point_key")
        if m.get("phase") not in PHASES:
            raise BundleError(f"{where}: phase {m.get('phase')!r} is not one of {', '.join(PHASES)}")
        for name, least in LEAST.items():
            v = m.get(name, least if name != "batch" else None)  # batch has no default
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise BundleError(f"{where}: {name} {v!r} is not a whole number of at least {least}")
        for name in LATENCIES:
            v = m.get(name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                                  or v <= 0):
                raise BundleError(f"{where}: {name} {v!r} is not a finite number above 0")
        j = points.setdefault((m["run"], m["point_key"]), i)
        if bundle["measurements"][j] != m:
            raise BundleError(f"{where}: entry {j} is another measurement of the same point; keep one of them")


def import_bundle(s: Session, *, bundle: dict) -> list[str]:
    """Add the bundle's runs that the store does not hold yet; returns the uids added. A bundle is checked
    whole before anything is written, and its runs, measurements and telemetry are added in one
    transaction: a bundle that fails adds none of them (devices and models it named may stay)."""
    _check_bundle(bundle)
    try:
        return _import_rows(s, bundle)
    except BundleError:
        s.rollback()
        raise
    except Exception as exc:  # a row the store refuses: nothing of the bundle's runs stays
        s.rollback()
        raise BundleError(f"the bundle could not be imported, nothing of its runs was added: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def _import_rows(s: Session, bundle: dict) -> list[str]:
    dev_id: dict[str, int] = {}
    for d in bundle["devices"]:
        d = _parse_ts(dict(d), "created_at")
        identity = d.pop("identity")
        dev_id[identity] = repo.upsert_device(s, identity=identity, **d).id
    model_id: dict[str, int] = {}
    for m in bundle["models"]:
        existing = s.exec(select(ModelSpec).where(ModelSpec.config_hash == m["config_hash"])).scalars().first()
        if existing is None:
            existing = ModelSpec(**_parse_ts(dict(m), "created_at"))
            s.add(existing)
            s.commit()
            s.refresh(existing)
        model_id[m["config_hash"]] = existing.id
    have = set(s.exec(select(Run.uid)).scalars())
    run_id: dict[str, int] = {}
    # oldest first, so that the store's ids (the order the app lists runs in, and which of two measurements of a
    # point is the latest) follow when the runs were made
    for r in sorted(bundle["runs"], key=_made_at):
        if r["uid"] in have or r["uid"] in run_id:  # held already, or listed twice in the bundle
            continue
        r = _parse_ts(dict(r), "created_at", "started_at", "finished_at", "heartbeat_at")
        dev = r.pop("device")
        run = Run(**r, device_id=dev_id.get(dev) if dev else None)
        s.add(run)
        s.flush()
        run_id[run.uid] = run.id
    points: set[tuple[str, str]] = set()
    # by their run's new id (stable: a run's own order kept); those of runs not added are skipped below
    for m in sorted(bundle["measurements"], key=lambda m: run_id.get(m["run"], 0)):
        if m["run"] not in run_id or (m["run"], m.get("point_key")) in points:
            continue
        points.add((m["run"], m.get("point_key")))
        m = _parse_ts(dict(m), "created_at")
        s.add(Measurement(**{k: v for k, v in m.items() if k not in ("run", "device", "model")},
                          run_id=run_id[m["run"]], device_id=dev_id[m["device"]], model_id=model_id[m["model"]]))
    for t in sorted(bundle["telemetry"], key=lambda t: run_id.get(t["run"], 0)):
        if t["run"] not in run_id:
            continue
        t = _parse_ts(dict(t), "t")
        s.add(TelemetrySample(**{k: v for k, v in t.items() if k not in ("run", "device")},
                              run_id=run_id[t["run"]], device_id=dev_id.get(t["device"]) if t["device"] else None))
    s.commit()
    return list(run_id)


def write_bundle(bundle: dict, path: Path) -> None:
    """Write the bundle to `path` whole or not at all: into a new file beside it, then renamed over it."""
    path = Path(path)
    text = json.dumps(bundle, indent=1, sort_keys=True) + "\n"
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise OSError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def read_bundle(path: Path) -> dict:
    """The JSON document in `path`; a BundleError, whose message names the file, when it cannot be read."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not a JSON text ({exc})") from None
    except OSError as exc:
        raise BundleError(f"{path} cannot be read ({exc.strerror or exc})") from None


def reference_dir() -> Path:
    return Path(os.environ.get(REFERENCE_ENV) or REFERENCE_DIR)


# reference bundles that were renamed when they moved to the archive: archive name → the name they were
# seeded under (stores remember seeded bundles by file name)
ARCHIVED_AS = {
    "h100-sxm-paper-5ef711a-2026-11-22.json": "h100-sxm-paper-2026-11-22.json",
    "h100-sxm-quick-7f56af4-2026-11-22.json": "h100-sxm-quick-2026-11-22.json",
    "h200-quick-2-gpus-c952f5a-2026-11-22.json": "h200-quick-2-gpus-2026-11-22.json",
}


def seed_reference(s: Session, *, folder: Path | None = None, archive: Path | None = None) -> list[str]:
    """Load each shipped reference bundle once per store (deleting its runs later does not re-add them);
    the uids of the runs added.

    First, a bundle this store was seeded with that has since moved to `archive` (a newer release measured
    that GPU again, on newer kernels) is retired once, so one GPU's surface does not pool two kernel
    generations: its runs leave the store, unless a run is also in a shipped bundle, or has changed since
    it was seeded (more points or another status, e.g. a cancelled reference run resumed on this machine),
    or is still running. An archive file that cannot be read is skipped (a warning; tried again on the next
    start). The file stays importable (`python -m store import FILE`), and a bundle imported by hand after
    its retirement stays.

    `folder` defaults to `$SSMPLAN_REFERENCE_DIR`, else `data/reference/`; `archive` to `data/archive/`."""
    folder = reference_dir() if folder is None else folder
    archive = ARCHIVE_DIR if archive is None else archive
    loaded = set(repo.get_setting(s, key=_SEEDED_KEY, default=[]) or [])
    shipped = sorted(Path(folder).glob("*.json"))
    bundles = {path.name: read_bundle(path) for path in shipped if path.name not in loaded}
    if loaded:
        _retire_archived(s, loaded - {p.name for p in shipped}, Path(archive), shipped, bundles)
    added: list[str] = []
    for name, b in bundles.items():
        added += import_bundle(s, bundle=b)
        loaded.add(name)
        repo.set_setting(s, key=_SEEDED_KEY, value=sorted(loaded))
    return added


def _bundle_runs(b: dict) -> dict[str, tuple[str, int]]:
    """uid → (status, points) of a bundle's runs."""
    points: dict[str, int] = {}
    for m in b.get("measurements", []):
        points[m["run"]] = points.get(m["run"], 0) + 1
    return {r["uid"]: (r["status"], points.get(r["uid"], 0)) for r in b.get("runs", [])}


def _retire_archived(s: Session, gone: set[str], archive: Path, shipped: list[Path], read: dict[str, dict]) -> None:
    """`seed_reference`'s first step: retire the archived bundles among `gone` (seeded names no longer
    shipped); `read` holds the shipped bundles already read, by file name."""
    retired = set(repo.get_setting(s, key=_RETIRED_KEY, default=[]) or [])
    todo = [p for p in sorted(archive.glob("*.json"))
            if p.name not in retired and {p.name, ARCHIVED_AS.get(p.name)} & gone]
    if not todo:
        return
    keep: set[str] = set()  # uids a shipped bundle still holds
    for path in shipped:
        try:
            keep |= set(_bundle_runs(read[path.name] if path.name in read else read_bundle(path)))
        except (BundleError, OSError, UnicodeDecodeError, KeyError):
            pass  # import_bundle reports a broken shipped bundle itself
    for path in todo:
        try:
            runs = _bundle_runs(read_bundle(path))
        except (BundleError, OSError, UnicodeDecodeError, KeyError) as exc:
            warnings.warn(f"reference bundle {path.name} could not be read to retire it ({exc}); kept", stacklevel=3)
            continue
        stored = {r.uid: r for r in s.exec(select(Run).where(Run.uid.in_(list(runs)))).scalars()}
        unchanged = [uid for uid, run in stored.items() if uid not in keep
                     and (run.status, len(repo.finished_point_keys(s, run_id=run.id))) == runs[uid]]
        if any(r.status not in repo.FINAL_STATUSES for r in stored.values()):
            continue  # one of its runs is being measured into: try again on the next start
        repo.delete_finished_runs(s, uids=unchanged)
        retired.add(path.name)
        repo.set_setting(s, key=_RETIRED_KEY, value=sorted(retired))
