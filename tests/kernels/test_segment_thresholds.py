"""scripts/segment_thresholds.py: its arguments are checked before any GPU work, and it says when there is no
GPU (the timing itself runs on one: docs/benchmarks.md, ninth session)."""

from __future__ import annotations

import pytest
import torch

@pytest.fixture(scope="module")
def script(load_script):
    return load_script("segment_thresholds")


def test_parses_threshold_pairs_and_defaults(script):
    args = script.parse_args(["--batch", "2", "--tokens", "512", "2048", "--thresholds", "1000000000/1024",
                              "512/128", "--two-segments-from", "0"])
    assert (args.batch, args.tokens, args.thresholds) == (2, [512, 2048], [(10**9, 1024), (512, 128)])
    assert args.two_segments_from == 0 and args.models == script.DEFAULT_MODELS
    assert script.parse_args([]).thresholds == [(4096, 1024), (512, 128)]


@pytest.mark.parametrize("argv, error", [
    (["--thresholds", "512"], "is not MIN_TOKENS/MIN_SEGMENT"),
    (["--thresholds", "512/0"], "is not MIN_TOKENS/MIN_SEGMENT"),
    (["--thresholds", "a/128"], "is not MIN_TOKENS/MIN_SEGMENT"),
    (["--models", "mamba3-siso-2b"], "unknown model preset"),
    (["--batch", "0"], "must be positive"),
])
def test_bad_arguments_stop_before_any_gpu_work(script, argv, error, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.main(argv)
    assert exit_info.value.code == 2 and error in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit path")
def test_says_it_needs_a_gpu(script, capsys):
    assert script.main(["--models", "mamba3-siso-tiny", "--tokens", "512"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
