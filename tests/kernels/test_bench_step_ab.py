"""The decode step's A/B tool (kernels.bench_step_ab): its variants and the patching, on the CPU."""

import pytest
import torch

from kernels.bench_step_ab import main, parse_variant, patched
from kernels.mamba3 import step as stepmod


def test_variants_parse_into_steplaunch_fields():
    assert parse_variant("fold_q=True, max_registers=96") == {"fold_q": True, "max_registers": 96}
    assert parse_variant("tma_rows=8,") == {"tma_rows": 8}
    for bad, match in (("rows", "field=value"), ("bogus=1", "StepLaunch field"), ("rows=eight", "Python literal"),
                       (",", "no field=value")):
        with pytest.raises(ValueError, match=match):
            parse_variant(bad)


def test_patching_replaces_one_regimes_fields_and_thresholds_and_restores_them():
    before = dict(stepmod.DEFAULT_CONFIG)
    limit = stepmod.MIMO_BF16_TMA_PROGRAMS_PER_SM
    with patched(True, "many", {"tma_rows": 8}, {"MIMO_BF16_TMA_PROGRAMS_PER_SM": 3}) as cfg:
        assert cfg.tma_rows == 8 and stepmod.DEFAULT_CONFIG[(True, "many")] is cfg
        assert stepmod.DEFAULT_CONFIG[(True, "mid")] == before[(True, "mid")]
        assert stepmod.MIMO_BF16_TMA_PROGRAMS_PER_SM == 3
    assert stepmod.DEFAULT_CONFIG == before and stepmod.MIMO_BF16_TMA_PROGRAMS_PER_SM == limit
    with pytest.raises(RuntimeError), patched(False, "few", {"rows": 2}):
        raise RuntimeError  # restored on an error too
    assert stepmod.DEFAULT_CONFIG == before


def test_holding_a_regime_makes_every_launch_take_its_patched_tile(monkeypatch):
    """With the regime held, a step the batch would put in another regime (here "many" on the CPU) launches the
    held regime's patched tile, as the whole model's steps do."""
    from kernels.mamba3.testing import random_inputs, random_state
    from kernels.mamba3.tl_utils import INTERPRETED

    if not INTERPRETED:
        pytest.skip("runs the step under TRITON_INTERPRET=1")
    seen, launch = [], stepmod.launch

    def spy(kernel, grid, *args, **meta):
        seen.append((meta["BLOCK_P"], meta["num_warps"]))
        return launch(kernel, grid, *args, **meta)

    monkeypatch.setattr(stepmod, "launch", spy)
    kw = random_inputs(1, None, 2, 16, 16, 4, 1)
    state = random_state(1, 2, 16, 16, 4)
    with patched(False, "mid", {"rows": 1, "num_warps": 2}, hold=True):  # 1 row at N = 128: 8 at N = 16
        stepmod.step(**kw, state=state)
    stepmod.step(**kw, state=state)
    assert seen == [(8, 2), (16, 4)]  # held: mid's patched tile; then the CPU's own "many" defaults


def test_the_regime_picked_counts_mimo_fed_by_tma_or_on_a_bf16_state_as_many_programs_earlier(monkeypatch):
    """`step.pick_regime`, which the step and this tool share, at the 1.5B shapes on an H200's 132 SMs."""
    sms, heads = 132, 64  # batch 16 is 7.8 programs per SM

    def state(dtype=torch.float32):
        return torch.zeros(1, heads, 64, 128, dtype=dtype)

    assert stepmod.pick_regime(4, state(), 16 * heads, sms) == "many"
    assert stepmod.pick_regime(4, state(torch.bfloat16), 16 * heads, sms) == "many"  # the pointer loads' tile
    assert stepmod.pick_regime(4, state(torch.bfloat16), 10 * heads, sms) == "mid"  # 4.8 programs per SM
    assert stepmod.pick_regime(1, state(torch.bfloat16), 16 * heads, sms) == "mid"
    assert stepmod.pick_regime(1, state(), 16 * heads, sms) == "mid"
    assert stepmod.pick_regime(4, state(), 1 * heads, sms) == "few"
    assert stepmod.pick_regime(4, state(), 16 * heads, sms, state_stages=0) == "mid"
    monkeypatch.setattr(stepmod, "_tma_can_take", lambda ssm: False)  # a GPU before sm_90
    assert stepmod.pick_regime(4, state(), 16 * heads, sms) == "mid"


def test_a_bad_variant_is_refused_before_any_gpu_work(capsys):
    with pytest.raises(SystemExit):
        main(["--variant", "bogus=1"])
    assert "StepLaunch field" in capsys.readouterr().err


def test_every_threshold_flag_names_a_step_module_constant():
    from kernels.bench_step_ab import THRESHOLDS

    for name in THRESHOLDS.values():
        assert isinstance(getattr(stepmod, name), int), name
    with patched(True, "many", None, {"MIMO_BF16_MANY_PROGRAMS_PER_SM": 9}):
        assert stepmod.pick_regime(4, torch.zeros(1, 64, 64, 128, dtype=torch.bfloat16), 8 * 132, 132) == "mid"
    assert stepmod.pick_regime(4, torch.zeros(1, 64, 64, 128, dtype=torch.bfloat16), 8 * 132, 132) == "many"


def test_models_parse_with_an_optional_state_dtype_and_bad_ones_are_refused_before_any_gpu_work(capsys):
    from kernels.bench_step_ab import parse_model

    assert parse_model("mamba2-1.5b") == ("mamba2-1.5b", None)
    assert parse_model("mamba3-siso-1.5b:bfloat16") == ("mamba3-siso-1.5b", "bfloat16")
    with pytest.raises(ValueError, match="unknown model preset 'nope'"):
        parse_model("nope")
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        parse_model("mamba2-1.5b:fp8")
    for argv, said in ((["--models", "nope"], "unknown model preset"),
                       (["--models", "mamba2-1.5b", "--threshold-tma", "0"], "variants only"),
                       (["--models", "mamba2-1.5b", "--whole"], "variants only")):
        with pytest.raises(SystemExit):
            main(argv)
        assert said in capsys.readouterr().err


def test_patching_every_regime_restores_them_all():
    from kernels.bench_step_ab import patched_all

    before = dict(stepmod.DEFAULT_CONFIG)
    with patched_all(False, {"xz_ahead": ""}):
        assert all(stepmod.DEFAULT_CONFIG[(False, r)].xz_ahead == "" for r in stepmod.REGIMES)
        assert stepmod.DEFAULT_CONFIG[(True, "mid")] == before[(True, "mid")]
    assert stepmod.DEFAULT_CONFIG == before
