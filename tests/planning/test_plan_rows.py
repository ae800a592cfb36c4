"""scripts/plan_rows.py: a workload's plan rows from the command line, on a store seeded from bundles."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
H100 = ROOT / "data" / "reference" / "h100-sxm-quick-594bee2-2026-11-22.json"


@pytest.fixture(scope="module")
def plan_rows(load_script):
    return load_script("plan_rows")


def test_prints_the_rows_and_the_pick_of_the_seeded_bundles(plan_rows, tmp_path, capsys):
    shutil.copy(H100, tmp_path)
    assert plan_rows.main(["chat", "--reference", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "chat (on-demand)"
    rows = [line.split() for line in out[2:] if line.strip() and not line.startswith(("pick: ", "caveat: ", "note: "))]
    assert all(any(r[0] == name for r in rows) for name in ("llama-3.2-1b", "mamba3-siso-1.5b", "mamba2-1.5b"))
    assert all("H100-SXM" in r for r in rows)  # projections are off by default: only the measured GPU
    costs = [float(r[-1]) for r in rows]
    assert costs == sorted(costs)  # cheapest first
    pick = next(line for line in out if line.startswith("pick: "))
    assert pick.endswith(f"${costs[0]:.6f} per task")
    assert out[out.index(pick) + 1].startswith("caveat: the chosen figures are")  # the pick's caveats follow it
    # the plan's messages follow: this bundle's prefill was timed eagerly, and the plan says so
    assert any(line.startswith("note: prefill on NVIDIA H100 80GB HBM3 (") and "timed eagerly" in line for line in out)


def test_refuses_bad_input(plan_rows, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        plan_rows.main(["no-such-workload"])
    assert exc.value.code == 2 and "unknown workload no-such-workload" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        plan_rows.main(["chat", "--reference", str(tmp_path)])
    assert exc.value.code == 2 and "holds no bundle" in capsys.readouterr().err
    # errors with a message of their own come out as that message and exit 2, not a traceback
    (tmp_path / "notes.json").write_text("[1, 2]")
    assert plan_rows.main(["chat", "--reference", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: not an ssmplan bundle")
    assert plan_rows.main(["chat", "--db", str(tmp_path / "empty.db")]) == 2
    assert "no measurements" in capsys.readouterr().err
    (tmp_path / "text.db").write_text("not a database")
    assert plan_rows.main(["chat", "--db", str(tmp_path / "text.db")]) == 2
    assert "not an SQLite database" in capsys.readouterr().err


def test_says_how_many_cpu_measurements_it_left_out_and_plans_them_when_asked(plan_rows, tmp_path, capsys):
    from .helpers import point, spec, write_store

    grid = [point("m", "decode", b, c, 2.0 * b) for b in (1, 4) for c in (64, 4096)]
    grid += [point("m", "prefill", 1, c, 0.01 * c) for c in (64, 4096)]
    path = tmp_path / "s.db"
    write_store(path, specs=[spec("m")], points=grid)
    write_store(path, specs=[spec("m")], points=grid, device=dict(identity="cpu-1", kind="cpu", name="Some CPU",
                                                                 memory_bytes=64 * 2**30))

    def run(*extra):
        assert plan_rows.main(["chat", "--db", str(path), *extra]) == 0
        out = capsys.readouterr().out.splitlines()
        rows = [line for line in out[2:] if line.strip() and not line.startswith(("pick: ", "caveat: ", "note: "))]
        return out, rows

    out, rows = run()
    assert ("note: CPU pipeline-check measurements: left out (6 CPU measurements; the store holds GPU "
            "measurements); --include-cpu plans them") in out
    assert rows and not any("Some CPU" in r for r in rows)
    out, rows = run("--include-cpu")
    assert "note: CPU pipeline-check measurements: included (6 CPU measurements)" in out
    assert any("Some CPU" in r for r in rows) and any("H100" in r for r in rows)


def test_without_a_pick_the_reason_is_said_once(plan_rows, tmp_path, capsys):
    from .helpers import point, spec, write_store

    grid = [point("short", "decode", b, c, 2.0 * b) for b in (1, 4) for c in (64, 512)]
    grid += [point("short", "prefill", 1, c, 0.01 * c) for c in (64, 512)]
    write_store(tmp_path / "s.db", specs=[spec("short", max_context=1024)], points=grid)
    assert plan_rows.main(["doc-qa-32k", "--db", str(tmp_path / "s.db")]) == 0
    out = capsys.readouterr().out.splitlines()
    pick = next(line for line in out if line.startswith("pick: "))
    assert pick.startswith("pick: none (") and pick != "pick: none (no feasible row)"
    reason = pick[len("pick: none ("):-1]
    assert f"note: {reason}" not in out
