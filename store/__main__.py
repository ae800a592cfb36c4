"""`python -m store`: where the store is, its schema version and row counts; import/export bundles."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from store import bundle, repo
from store.db import ENV_VAR, StoreError, describe, get_engine, resolve_url, session, sqlite_path
from store.models import SCHEMA_VERSION, Meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m store", description="Inspect the ssmplan store.")
    p.add_argument("--db", help=f"SQLAlchemy URL or SQLite file (default: ${ENV_VAR}, else data/ssmplan.db)")
    sub = p.add_subparsers(dest="cmd")
    sub.add_parser("info", help="location, schema version and row counts (the default)")
    imp = sub.add_parser("import", help="load bundle file(s) (runs already present are skipped)")
    imp.add_argument("files", nargs="+", type=Path)
    exp = sub.add_parser("export", help="write runs with their measurements to a bundle file")
    exp.add_argument("--run", type=int, action="append", required=True, help="run id (repeatable)")
    exp.add_argument("-o", "--output", type=Path, required=True)
    sub.add_parser("seed", help="load the shipped reference measurements (once per store)")
    args = p.parse_args(argv)
    try:
        url = resolve_url(args.db)
        get_engine(url)
        with session(url) as s:
            if args.cmd == "import":
                failed = 0
                for f in args.files:  # each file imports whole or not at all; a bad one does not stop the rest
                    try:
                        uids = bundle.import_bundle(s, bundle=bundle.read_bundle(f))
                    except (bundle.BundleError, OSError) as exc:
                        print(f"error: {f}: {exc}; nothing of it was imported", file=sys.stderr)
                        failed += 1
                        continue
                    print(f"{f}: {len(uids)} run(s) added")
                if failed:
                    return 2
            elif args.cmd == "export":
                bundle.write_bundle(bundle.export_runs(s, run_ids=args.run), args.output)
                print(f"wrote {args.output}")
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
