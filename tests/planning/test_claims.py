import math

import pandas as pd
import pytest

from app.planning.claims import memory_claim, paper_workload
from app.planning.subjects import measured_sets


def test_memory_claim_by_hand(analytic):
    sets, _ = measured_sets(analytic[0], dtype=None, models=None, weight_by_model={})
    t = memory_claim(sets).set_index("model")
    llama = t.loc["llama-3.2-1b (transformer)"]
    # 16e9 × 0.9 − 2 GiB = 12,252,516,352; less 2,471,628,800 of weights = 9,780,887,552 B for KV.
    # 4k tokens × 32 KiB = 134,217,728 B → 72.9 → 72 sequences; 32k tokens → 9.1 → 9 sequences.
    assert (llama["max_batch_at_4k"], llama["max_batch_at_32k"]) == (72, 9)
    assert llama["max_context_at_batch_64"] == 4663  # 9,780,887,552 / 64 / 32,768
    mamba = t.loc["mamba3-siso-1.5b (mamba3-siso)"]
    assert mamba["max_batch_at_4k"] == mamba["max_batch_at_32k"] == 181
    assert math.isinf(mamba["max_context_at_batch_64"])
    assert t.loc["Llama-2-7B (config)", "max_batch_at_4k"] == 0


def test_paper_workload_runs_the_transformer_in_waves_at_16k(analytic):
    sets, _ = measured_sets(analytic[0], dtype=None, models=None, weight_by_model={})
    t = paper_workload(sets, transformer="llama-3.2-1b", ssm="mamba3-siso-1.5b", gpu="H100-SXM").set_index("n")
    # 128 sequences × 32k tokens of KV do not fit in 80 GB: 62 at a time (see the capacity example) → 3 waves
    assert (t.loc[16384, "transformer_waves"], t.loc[16384, "transformer_batch"]) == (3, 62)
    assert (t.loc[[512, 1024, 2048, 4096], "transformer_waves"] == 1).all()
    assert t["ratio_transformer_over_ssm"].is_monotonic_increasing
    assert t.loc[512, "paper_ratio"] == 4.45 / 4.39


def test_paper_workload_names_what_is_missing(analytic):
    sets, _ = measured_sets(analytic[0], dtype=None, models=None, weight_by_model={})
    with pytest.raises(ValueError, match="no measured decode and prefill for nope on H100-SXM; there are: llama"):
        paper_workload(sets, transformer="llama-3.2-1b", ssm="nope", gpu="H100-SXM")


def test_the_claims_command_refuses_bad_input_with_a_message(tmp_path, capsys):
    from app.planning.claims import main

    not_a_store = tmp_path / "notes.txt"
    not_a_store.write_text("hello\n")
    for argv, says in [(["--db", "foo://bar"], "not a valid SQLAlchemy URL"),
                       (["--db", str(not_a_store)], "is not an SQLite database"),
                       (["--gpu", "NOPE"], "the analytic stand-in knows H100-SXM"),
                       (["--ssm", "nope"], "no measured decode and prefill for nope")]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and says in capsys.readouterr().err, argv
    assert not_a_store.read_text() == "hello\n"


def test_the_claims_command_prints_whole_counts_and_names_an_unbounded_context(capsys):
    from app.planning.claims import main

    main([])
    out = capsys.readouterr().out
    llama = next(line for line in out.splitlines() if "llama-3.2-1b (transformer)" in line)
    assert llama.split()[-3:] == ["298,489", "37,311", "4,663"]
    siso = next(line for line in out.splitlines() if "mamba3-siso-1.5b (mamba3-siso)" in line)
    assert siso.count("no memory limit") == 3 and "inf" not in siso


def test_a_surface_from_unsteady_points_says_how_many(analytic):
    """Points whose p90 is above 1.5 × their p10 still plan, with a message naming how many, of which model, where."""
    m = analytic[0]
    assert not any("timed unsteadily" in msg for msg in measured_sets(m, dtype=None, models=None,
                                                                           weight_by_model={})[1])
    preset = sorted(m["preset"].unique())[0]
    rows = m.index[(m["preset"] == preset) & (m["phase"] == "decode") & ~m["oom"].astype(bool)][:3]
    shaky = m.copy()
    shaky.loc[rows, "latency_p90_ms"] = shaky.loc[rows, "latency_p10_ms"] * 2
    sets, messages = measured_sets(shaky, dtype=None, models=None, weight_by_model={})
    said = [msg for msg in messages if "timed unsteadily" in msg]
    assert len(said) == 1 and said[0].startswith(f"3 point(s) of {preset} on ")
    assert "measure them again on an idle machine" in said[0]
    # the same points timed again in a second run of the same code still count once
    twice = pd.concat([shaky, shaky.loc[rows].assign(run_id=shaky["run_id"].max() + 1)], ignore_index=True)
    said = [msg for msg in measured_sets(twice, dtype=None, models=None, weight_by_model={})[1]
            if "timed unsteadily" in msg]
    assert len(said) == 1 and said[0].startswith(f"3 point(s) of {preset} on ")
    assert len(sets) == len(measured_sets(m, dtype=None, models=None, weight_by_model={})[0])
