"""`python -m store`: where the store is, its schema version and row counts; import/export bundles."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from store import bundle, repo
from store.db import ENV_VAR, StoreError, describe, get_engine, in_memory, resolve_url, session, sqlite_path
from store.models import SCHEMA_VERSION, Meta


def _check_output(out: Path, url: str, *, force: bool) -> None:
    """Refuse to write a bundle over the store being read (or its -wal/-shm/-journal files), over a folder, or
    over any existing file unless `force`."""
    store = sqlite_path(url)
    if store is not None:
        for f in (store, *(store.with_name(store.name + end) for end in ("-wal", "-shm", "-journal"))):
            if out.resolve() == f.resolve() or (out.exists() and f.exists() and os.path.samefile(out, f)):
                raise StoreError(f"{out} is the store being exported (or one of its files); "
                                 "write the bundle to another file")
    if out.is_dir():
        raise StoreError(f"{out} is a folder; give the bundle a file name")
    if out.exists() and not force:
        raise StoreError(f"{out} exists; pass --force to overwrite it")


def _import_file(s, path: Path) -> str | None:
    """Imports one bundle file and says how many runs it added; returns why it could not, naming the file once."""
    try:
        doc = bundle.read_bundle(path)
    except bundle.BundleError as exc:  # its message names the file
        return str(exc)
    try:
        uids = bundle.import_bundle(s, bundle=doc)
    except bundle.BundleError as exc:
        return f"{path}: {exc}"
    print(f"{path}: {len(uids)} run(s) added")
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m store", description="Inspect the ssmplan store.")
    p.add_argument("--db", help=f"SQLAlchemy URL or SQLite file (default: ${ENV_VAR}, else data/ssmplan.db)")
    sub = p.add_subparsers(dest="cmd")
    sub.add_parser("info", help="location, schema version and row counts (the default)")
    imp = sub.add_parser("import", help="load bundle file(s) (runs already present are skipped)")
    imp.add_argument("files", nargs="+", type=Path)
    exp = sub.add_parser("export", help="write runs with their measurements to a bundle file")
    which = exp.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", type=int, action="append", help="run id (repeatable)")
    which.add_argument("--all", action="store_true", help="every run in the store")
    exp.add_argument("-o", "--output", type=Path, required=True)
    exp.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    sub.add_parser("seed", help="load the shipped reference measurements (once per store)")
    args = p.parse_args(argv)
    try:
        url = resolve_url(args.db)
        if in_memory(url):
            raise StoreError("an in-memory store would be gone when this command ends; give a file path")
        if args.cmd == "export":
            _check_output(args.output, url, force=args.force)
        get_engine(url)
        with session(url) as s:
            if args.cmd == "import":
                failed = 0
                for f in args.files:  # each file imports whole or not at all; a bad one does not stop the rest
                    problem = _import_file(s, f)
                    if problem:
                        print(f"error: {problem}; nothing of it was imported", file=sys.stderr)
                        failed += 1
                if failed:
                    return 2
            elif args.cmd == "export":
                run_ids = sorted(int(i) for i in repo.read_runs(s)["id"]) if args.all else args.run
                if not run_ids:
                    raise StoreError("the store holds no runs; nothing was exported")
                bundle.write_bundle(bundle.export_runs(s, run_ids=run_ids), args.output)
                print(f"wrote {args.output} ({len(set(run_ids))} run(s))")
            elif args.cmd == "seed":
                print(f"{len(bundle.seed_reference(s))} reference run(s) added")
            else:
                path = sqlite_path(url)
                version = s.get(Meta, "schema_version")
                print(f"store:          {describe(url)}")
                if path is not None:
                    print(f"file:           {path} ({path.stat().st_size if path.exists() else 0:,} bytes)")
                print(f"schema version: {version.value if version else '?'} (this ssmplan: {SCHEMA_VERSION})")
                for table, n in repo.counts(s).items():
                    print(f"  {table:<14} {n:>10,}")
    except (StoreError, bundle.BundleError, KeyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
