"""Queued runs as rows: workers claim, heartbeat, and give back what a dead worker left.

We build no scheduler: the store is the work queue. A worker claims the oldest queued run atomically —
`SELECT … FOR UPDATE SKIP LOCKED` on PostgreSQL, one conditional `UPDATE … RETURNING` on SQLite, whose
writers are serialised by the database lock — so no run is claimed twice. A running run whose worker has
not heartbeated for `stale_after_s` goes back to the queue; since measurements are keyed by
`(run, point_key)`, whoever claims it next resumes without repeating finished points.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import and_, or_, select, text, update
from sqlmodel import Session

from store.models import Run, utcnow

DEFAULT_STALE_AFTER_S = 60.0


def claim_next_run(s: Session, *, worker: str, device_filter: str | None = None) -> Run | None:
    """Mark the oldest queued run as running by `worker` and return it; None when the queue is empty.

    `device_filter` keeps a worker to runs whose request names its device (`request["device"]`), or
    that name none; a request for "any" device means any GPU, so a CPU worker leaves it to the GPU workers.
    """
    dialect = s.get_bind().dialect.name
    for _ in range(8):
        # read the candidates without locking them: a locking read of many rows would hide them all from
        # the other workers until this claim commits, and those would take the queue for empty
        cand = select(Run.id, Run.request).where(Run.status == "queued").order_by(Run.id).limit(64)
        fitting = [r.id for r in s.exec(cand).all() if _fits(r.request, device_filter)]
        s.rollback()
        if not fitting:
            return None
        for rid in fitting:
            if dialect == "postgresql":  # lock just this row; one another worker holds is skipped
                mine = s.exec(select(Run.id).where(Run.id == rid, Run.status == "queued")
                              .with_for_update(skip_locked=True)).first()
                if mine is None:
                    s.rollback()
                    continue
            now = utcnow()
            res = s.execute(
                update(Run)
                .where(Run.id == rid, Run.status == "queued")
                .values(status="running", worker=worker, heartbeat_at=now, started_at=now,
                        attempts=Run.attempts + 1, error=None)
                .returning(Run.id)
            ).first()
            s.commit()
            if res is not None:
                run = s.get(Run, rid)
                s.refresh(run)
                return run
    return None


def _fits(request: dict | None, device_filter: str | None) -> bool:
    if device_filter is None:
        return True
    wanted = (request or {}).get("device")
    if wanted == "any":
        return device_filter != "cpu"
    return wanted in (None, "", device_filter)


def heartbeat(s: Session, *, run_id: int, worker: str) -> bool:
    """Stamp the run as alive; False when it is no longer ours (requeued, cancelled, finished)."""
    res = s.execute(
        update(Run)
        .where(Run.id == run_id, Run.worker == worker, Run.status == "running")
        .values(heartbeat_at=utcnow())
        .returning(Run.id)
    ).first()
    s.commit()
    return res is not None


def requeue_stale(s: Session, *, stale_after_s: float = DEFAULT_STALE_AFTER_S, max_attempts: int = 3) -> list[int]:
    """Give running runs whose worker went silent back to the queue (or fail them after `max_attempts`)."""
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    silent = and_(Run.status == "running", or_(Run.heartbeat_at.is_(None), Run.heartbeat_at < cutoff))
    stale = s.exec(select(Run.id, Run.attempts, Run.cancel_requested, Run.worker).where(silent)).all()
    requeued = []
    for r in stale:
        if r.cancel_requested:
            values = dict(status="cancelled", finished_at=utcnow())
        elif r.attempts >= max_attempts:
            values = dict(status="failed", finished_at=utcnow(),
                          error=f"worker {r.worker} stopped heartbeating; gave up after {r.attempts} attempts")
        else:
            values = dict(status="queued", worker=None, error=f"worker {r.worker} stopped heartbeating; requeued")
        res = s.execute(update(Run).where(Run.id == r.id, silent).values(**values).returning(Run.id)).first()
        if res is not None and values["status"] == "queued":
            requeued.append(r.id)
    s.commit()
    return requeued


def queue_depth(s: Session) -> int:
    return int(s.exec(text("SELECT COUNT(*) FROM runs WHERE status = 'queued'")).scalar())
