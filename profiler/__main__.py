"""`python -m profiler`: measure models on this machine's GPU (or CPU) into the store."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys

from store.db import ENV_VAR, StoreError, describe, get_engine, session, shared_url, sqlite_path

EPILOG = f"""\
examples:
  python -m profiler devices                      what this machine can measure on
  python -m profiler run                          the default sweep: 'quick' on a GPU, 'cpu-demo' on a CPU
  python -m profiler run --scenario paper         the Mamba-3 paper's batch-128 workload, with its table
  python -m profiler run --models mamba3-siso-tiny transformer-tiny --device cpu \\
      --batch 1 4 --prompt 64 --context 128 512   your own grid
  python -m profiler run --models ./my-checkpoint --scenario capacity
  python -m profiler execute 12                   run (or resume) run 12 as it was queued
  python -m profiler cancel 12                    ask run 12 to stop (it stops within seconds)
  python -m profiler show 12 --json               a finished run's points as JSON
  python -m profiler worker --all-gpus --db postgresql+psycopg://host/ssmplan
                                                  one queue worker per GPU on a shared store

The store is --db (a SQLAlchemy URL or an SQLite file), else ${ENV_VAR}, else data/ssmplan.db.
Exit status: 0 done, 1 failed, 2 invalid arguments, 3 cancelled."""

EXIT = {"done": 0, "failed": 1, "cancelled": 3}


def _list(values: list[str] | None) -> list[str] | None:
    """`--batch 1 16` and `--batch 1,16` alike."""
    if values is None:
        return None
    return [v for item in values for v in item.split(",") if v]


def _seconds(text: str, zero_ok: bool = False) -> float:
    """A worker's interval in seconds: a finite number > 0 (≥ 0 with `zero_ok`); argparse turns the error into a
    usage message."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds {'≥' if zero_ok else '>'} 0")
    return value


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help=f"store: SQLAlchemy URL or SQLite file (default: ${ENV_VAR}, else data/ssmplan.db)")


def _add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="also print the run as one JSON document on stdout "
                                                       "(the summary table always goes to stderr)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="show each measured point as it is stored")


def _add_request(p: argparse.ArgumentParser, *, device_help: str) -> None:
    """The options of a request, shared by `run` and `enqueue` (each says what its --device means)."""
    from profiler.scenarios import SCENARIOS

    p.add_argument("--scenario", choices=list(SCENARIOS),
                   help="a named sweep; grid options below override its values (default: quick on a GPU, "
                        "cpu-demo on a CPU, unless you give a grid)")
    p.add_argument("--models", nargs="+", metavar="MODEL", help="preset names or checkpoint folders")
    p.add_argument("--device", help=device_help)
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                   help="model dtype (default: bfloat16 on CUDA, float32 on the CPU)")
    p.add_argument("--impl", choices=["triton", "chunked", "sequential"],
                   help="scan implementation (default: triton on CUDA, chunked on the CPU)")
    p.add_argument("--batch", nargs="+", metavar="B", help="batch sizes (decode, and prefill unless --prefill-batch)")
    p.add_argument("--prefill-batch", nargs="+", metavar="B", help="batch sizes for prefill points")
    p.add_argument("--prompt", nargs="+", metavar="P", help="prompt lengths of prefill points")
    p.add_argument("--context", nargs="+", metavar="C", help="tokens held at decode points")
    p.add_argument("--warmup", type=int, help="untimed calls before each point")
    p.add_argument("--min-repeats", type=int, help="at least this many timed calls per point")
    p.add_argument("--min-duration", type=float, metavar="S", help="and at least this many seconds of them")
    p.add_argument("--max-repeats", type=int, help="at most this many timed calls (once the minimums are met)")
    p.add_argument("--max-batch", type=int, help="capacity probe: largest batch tried")
    p.add_argument("--ncu", action="store_true", help="also count DRAM bytes and FLOPs of one decode step per "
                                                      "model with Nsight Compute (where ncu is installed)")
    p.add_argument("--seed", type=int, help="seed of the random weights and tokens (default 0)")
    p.add_argument("--label", help="a name for the run in the app")
    p.add_argument("--time-limit", type=float, metavar="S", help="cancel the run after this many seconds "
                                                                 "(points done are kept; resume later)")
    p.add_argument("--allow-slow", action="store_true",
                   help="run a GPU-sized scenario (quick, paper, capacity) on the CPU anyway (hours)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m profiler", description=(
        "Profile language models (Mamba-3, Mamba-2, Transformers, hybrids) on this machine: prefill and "
        "decode latency, throughput, memory, bandwidth, FLOPs and energy per point, into the store that the "
        "ssmplan app reads."), epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    dev = sub.add_parser("devices", help="list the GPUs (NVML and torch) and the CPU")
    dev.add_argument("--json", action="store_true")

    sub.add_parser("scenarios", help="list the named scenarios")

    run = sub.add_parser("run", help="measure a scenario or a grid (creates a run, then executes it)",
                         formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    _add_request(run, device_help="cpu, cuda or cuda:N (default: cuda:0 when a GPU is visible, else cpu)")
    run.add_argument("--resume", type=int, metavar="RUN_ID",
                     help="continue this run instead of starting one (its own request is used)")
    run.add_argument("--in-process", action="store_true", help="measure in this process (debugging)")
    _add_db(run)
    _add_output(run)

    enq = sub.add_parser("enqueue", help="queue a scenario or grid for workers (`worker`) to run; prints the run id(s)")
    _add_request(enq, device_help="cpu, cuda:N, or any (the default; 'cuda' means any GPU worker)")
    enq.add_argument("--per-model", action="store_true",
                     help="one queued run per model, so that several GPU workers share the sweep")
    _add_db(enq)

    ex = sub.add_parser("execute", help="run (or resume) a queued, failed or cancelled run by its id")
    ex.add_argument("run_id", type=int)
    ex.add_argument("--time-limit", type=float, metavar="S", help="cancel after this many seconds (points kept)")
    ex.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    _add_db(ex)
    _add_output(ex)

    cancel = sub.add_parser("cancel", help="ask a run to stop (a queued run is cancelled at once)")
    cancel.add_argument("run_id", type=int)
    _add_db(cancel)

    show = sub.add_parser("show", help="a run's summary table (or JSON)")
    show.add_argument("run_id", type=int)
    show.add_argument("--json", action="store_true")
    _add_db(show)

    wk = sub.add_parser("worker", help="take queued runs from a (shared) store and execute them on one GPU")
    wk.add_argument("--device", default="cuda:0", help="this worker's device: cuda:N (or cpu); default cuda:0")
    wk.add_argument("--all-gpus", action="store_true", help="start one worker per visible GPU instead")
    wk.add_argument("--poll", type=_seconds, default=2.0, metavar="S", help="seconds between looks at an empty queue")
    wk.add_argument("--exit-when-idle", type=lambda t: _seconds(t, zero_ok=True), metavar="S",
                    help="stop after the queue stayed empty this long")
    wk.add_argument("--stale-after", type=_seconds, default=60.0, metavar="S",
                    help="requeue a run whose worker has not heartbeated for this long (default 60)")
    _add_db(wk)

    meas = sub.add_parser("measure")  # the measuring child process (no help: not listed)
    meas.add_argument("run_id", type=int)
    meas.add_argument("--models", required=True)
    meas.add_argument("--parent-pid", type=int)
    meas.add_argument("--device")
    _add_db(meas)

    step = sub.add_parser("ncu-step")  # the program Nsight Compute profiles (not listed)
    step.add_argument("--part", choices=["step", "calib"], required=True)
    step.add_argument("--model")
    step.add_argument("--device", default="cuda:0")
    step.add_argument("--dtype", default="bfloat16")
    step.add_argument("--impl", default="triton")
    step.add_argument("--batch", type=int, default=1)
    step.add_argument("--context", type=int, default=1)
    step.add_argument("--seed", type=int, default=0)
    return p


def _request_fields(a: argparse.Namespace) -> dict:
    raw = dict(scenario=a.scenario, models=a.models, device=a.device, dtype=a.dtype, impl=a.impl,
               batches=_list(a.batch), prefill_batches=_list(a.prefill_batch), prompts=_list(a.prompt),
               contexts=_list(a.context), warmup=a.warmup, min_repeats=a.min_repeats,
               min_duration_s=a.min_duration, max_repeats=a.max_repeats, capacity_max_batch=a.max_batch,
               ncu=a.ncu or None, seed=a.seed, label=a.label, time_limit_s=a.time_limit,
               allow_slow=a.allow_slow or None)
    return {k: v for k, v in raw.items() if v is not None}


def _report(url: str, run, as_json: bool) -> None:
    from profiler import paper, progress
    from store import repo

    with session(url) as s:
        doc = progress.run_document(s, run)
        frame = repo.read_measurements(s, run_ids=[run.id])
    if as_json:
        print(json.dumps(doc, indent=1))
    print(progress.summary_table(frame), file=sys.stderr)
    if "paper_table" in doc:
        print("\nThe paper's workload (seconds; paper: H100-SXM, vLLM for Llama-3.2-1B):", file=sys.stderr)
        print(paper.format_table(doc["paper_table"]), file=sys.stderr)
    for row in doc.get("capacity", []):
        more = f", batch {row['first_oom_batch']} does not" if row["first_oom_batch"] else ""
        print(f"capacity {row['model']} @ {row['context']} tokens: batch {row['max_batch']} fits{more}",
              file=sys.stderr)
    device = doc["device"] or {}
    print(f"\nrun {run.id} ({run.uid}) {run.status} on {device.get('name', '?')}: {len(frame)} points in "
          f"{describe(url)}" + (f"\n{run.error}" if run.error else ""), file=sys.stderr)


def _devices(as_json: bool) -> None:
    from profiler.device import cpu_fields, nvml_gpus

    gpus, why = nvml_gpus()
    torch_view: dict = {}
    try:
        import torch

        torch_view = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
                      "devices": [{"index": i, "name": torch.cuda.get_device_name(i),
                                   "capability": ".".join(map(str, torch.cuda.get_device_capability(i)))}
                                  for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []}
    except ImportError:
        torch_view = {"torch": None}
    cpu = cpu_fields()
    if as_json:
        print(json.dumps({"nvml": [g.__dict__ for g in gpus], "nvml_error": why, "torch": torch_view, "cpu": cpu},
                         indent=1))
        return
    print("GPUs (NVML):" if gpus else f"GPUs (NVML): none ({why or 'no GPU'})")
    for g in gpus:
        limit = f", power limit {g.power_limit_w:.0f} W" if g.power_limit_w else ""
        print(f"  cuda:{g.index}  {g.name}  {g.memory_bytes / 2**30:.1f} GiB  driver {g.driver_version}{limit}  "
              f"{g.uuid}")
    if torch_view.get("torch"):
        seen = (", ".join(f"cuda:{d['index']} {d['name']} (sm {d['capability']})" for d in torch_view["devices"])
                or "no CUDA device")
        print(f"torch {torch_view['torch']}: {seen}")
    mem = f", {cpu['memory_bytes'] / 2**30:.1f} GiB" if cpu["memory_bytes"] else ""
    print(f"cpu     {cpu['name']}{mem}  (device 'cpu': tiny presets run there for real)")


def _scenarios() -> None:
    from profiler.scenarios import SCENARIOS

    for sc in SCENARIOS.values():
        print(f"{sc.name:<9} {sc.description}\n          models: {', '.join(sc.models)}")


def _require_visible_gpu(device: str | None) -> None:
    """A run measured here on a GPU needs this process to see that GPU: refused up front (no run is
    created) rather than failing inside the measuring process. Queued runs are not checked (a worker
    on another machine may take them)."""
    from profiler.device import parse_device
    from profiler.request import RequestError

    if device is None:
        return
    kind, index = parse_device(device)
    if kind != "cuda":
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise RequestError(f"device {device!r}: this machine has no CUDA GPU that PyTorch can use; measure on "
                           "the CPU with --device cpu, or `enqueue` the run for a GPU worker")
    if index is not None and index >= count:
        raise RequestError(f"device {device!r}: PyTorch sees {count} CUDA GPU(s) here (cuda:0 … cuda:{count - 1})")


def main(argv: list[str] | None = None) -> int:
    p = parser()
    a = p.parse_args(argv)
    if a.cmd is None:
        p.print_help()
        return 2
    from profiler.device import DeviceError, parse_device
    from profiler.models import ModelRefError
    from profiler.request import RequestError
    from profiler.runner import RunError

    try:
        if a.cmd == "devices":
            _devices(a.json)
            return 0
        if a.cmd == "scenarios":
            _scenarios()
            return 0
        if a.cmd == "ncu-step":
            from profiler.ncu import run_part

            run_part(part=a.part, model=a.model, device=a.device, dtype=a.dtype, impl=a.impl, batch=a.batch,
                     context=a.context, seed=a.seed)
            return 0
        url = shared_url(a.db)
        path = sqlite_path(url)
        if a.cmd in ("show", "cancel") and path is not None and not path.exists():
            raise StoreError(f"there is no store at {path}; check --db or {ENV_VAR}")
        get_engine(url)
        if a.cmd == "measure":
            from profiler.measure import run_models

            return run_models(url, run_id=a.run_id, model_indices=[int(i) for i in a.models.split(",")],
                              parent_pid=a.parent_pid, device=a.device)
        if a.cmd == "worker":
            from profiler import worker

            if a.all_gpus:
                return worker.all_gpus(url, poll_s=a.poll, idle_exit_s=a.exit_when_idle)
            parse_device(a.device)
            worker.work(url, device=a.device, poll_s=a.poll, idle_exit_s=a.exit_when_idle, stale_after_s=a.stale_after)
            return 0
        if a.cmd == "cancel":
            from store import repo

            with session(url) as s:
                asked = repo.request_cancel(s, run_id=a.run_id)
                status = repo.get_run(s, run_id=a.run_id).status
            print(f"run {a.run_id}: " + ("cancel requested" if asked else f"already {status}") + f" (status {status})")
            return 0
        if a.cmd == "show":
            from store import repo

            with session(url) as s:
                run = repo.get_run(s, run_id=a.run_id)
            if run is None:
                raise RunError(f"no run with id {a.run_id}")
            _report(url, run, a.json)
            return EXIT.get(run.status, 0)
        from profiler import runner
        from profiler.progress import ProgressBar
        from profiler.request import make_request

        if a.cmd == "enqueue":
            from profiler.scenarios import SCENARIOS

            pinned = a.scenario and SCENARIOS[a.scenario].device  # e.g. cpu-demo runs on the CPU
            if a.device == "cuda" or (a.device is None and not pinned):
                a.device = "any"  # queued work goes to whichever GPU worker is free, not to cuda:0
            req = make_request(_request_fields(a))
            reqs = [dataclasses.replace(req, models=(m,)) for m in req.models] if a.per_model else [req]
            ids = [runner.create_run(url, r) for r in reqs]
            print(" ".join(map(str, ids)))
            workers = "--all-gpus" if req.device == "any" else f"--device {req.device}"
            print(f"queued {len(ids)} run(s) on {describe(url)} for device {req.device}; start "
                  f"{'workers' if req.device == 'any' else 'a worker'} with "
                  f"`python -m profiler worker {workers} --db URL`", file=sys.stderr)
            return 0

        bar = None if a.quiet or a.json and not sys.stderr.isatty() else ProgressBar()
        opts = dict(isolate=not a.in_process, bar=bar, verbose=a.verbose)
        if a.cmd == "execute":
            if a.time_limit is not None and not (a.time_limit > 0 and math.isfinite(a.time_limit)):
                raise RequestError(f"time limit must be a finite number of seconds > 0, got {a.time_limit}")
            run = runner.execute(url, a.run_id, time_limit_s=a.time_limit, **opts)
        elif a.resume is not None:
            if _request_fields(a):
                raise RequestError("--resume continues a run with its own request: give no other run options")
            run = runner.execute(url, a.resume, **opts)
        else:
            _require_visible_gpu(a.device)
            run = runner.run_new(url, make_request(_request_fields(a)), **opts)
        _report(url, run, a.json)
        return EXIT.get(run.status, 1)
    except (RequestError, ModelRefError, DeviceError, StoreError, RunError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
