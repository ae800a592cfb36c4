"""The public-kernel comparison's input mapping (`kernels.bench_public`): both sides must compute on the same
numbers, laid out as the public API asserts. The timed comparison itself needs a GPU and state-spaces/mamba."""

import math
from types import SimpleNamespace

import pytest
import torch

from kernels import bench_public
from kernels.bench import H, N, P, S
from kernels.mamba3.testing import random_inputs, random_state


def test_lambda_and_theta_go_through_the_public_bf16_raw_inputs():
    kw, trap, u = bench_public.matched_inputs(2, 5, device="cpu")
    assert trap.dtype == u.dtype == torch.bfloat16
    assert torch.equal(kw["lam"], torch.sigmoid(trap.float()))
    assert torch.equal(kw["theta"], math.pi * torch.tanh(u.float()))
    # the rounding moves λ and θ by at most bf16's relative step of the raw values
    raw = random_inputs(2, 5, H, P, N, S, dtype=torch.bfloat16)
    assert (kw["lam"] - raw["lam"]).abs().max() < 5e-3
    assert (kw["theta"] - raw["theta"]).abs().max() < 0.05


def test_prefill_arguments_have_the_public_layout():
    kw, trap, u = bench_public.matched_inputs(2, 7, device="cpu")
    pa = bench_public.public_prefill_args(kw, trap, u)
    assert pa["Q"].shape == pa["K"].shape == (2, 7, 1, N)
    assert torch.equal(pa["Q"][:, :, 0], kw["C"][:, :, 0, 0]) and torch.equal(pa["K"][:, :, 0], kw["B"][:, :, 0, 0])
    for name, ours in (("ADT", kw["adt"]), ("DT", kw["dt"]), ("Trap", trap)):
        assert pa[name].shape == (2, H, 7) and pa[name].is_contiguous()
        assert torch.equal(pa[name][1, 3, 4], ours[1, 4, 3])
    assert pa["Angles"].shape == (2, 7, H, S) and torch.equal(pa["Angles"][:, :, 5], u)
    assert pa["Q_bias"].shape == pa["K_bias"].shape == (H, N)
    assert torch.equal(pa["Q_bias"], kw["C_bias"][:, 0]) and torch.equal(pa["K_bias"], kw["B_bias"][:, 0])
    assert pa["V"] is kw["x"] and pa["Z"] is kw["z"] and pa["D"] is kw["D"]


def test_step_arguments_have_the_public_layout():
    kw, trap, u = bench_public.matched_inputs(3, None, device="cpu")
    st = random_state(3, H, P, N, S, dtype=torch.bfloat16)
    pa = bench_public.public_step_args(kw, trap, u, st)
    assert pa["Q"].shape == pa["K"].shape == (3, 1, N) and pa["V"].shape == (3, H, P)
    assert torch.equal(pa["Q"], kw["C"][:, 0]) and torch.equal(pa["K"], kw["B"][:, 0]) and pa["V"] is kw["x"]
    assert pa["ADT"] is kw["adt"] and pa["DT"] is kw["dt"] and pa["Trap"] is trap  # λ before its sigmoid
    assert pa["ADT"].shape == (3, H) and not torch.equal(pa["ADT"], pa["DT"])
    assert torch.equal(pa["Q_bias"], kw["C_bias"][:, 0]) and torch.equal(pa["K_bias"], kw["B_bias"][:, 0])
    assert pa["D"] is kw["D"] and pa["Z"] is kw["z"]
    assert pa["Angles"].shape == (3, H, S) and torch.equal(pa["Angles"][:, 2], u)
    angle, ssm, k, x = pa["Input_States"]
    assert angle is st.angle and ssm is st.ssm and x is st.x and torch.equal(k, st.k[:, 0])


def test_public_kernels_absent_gives_none(monkeypatch):
    def refuse(name):
        raise ModuleNotFoundError(name, name="mamba_ssm")
    monkeypatch.setattr(bench_public.importlib, "import_module", refuse)
    assert bench_public.public_kernels() is None


def test_a_broken_public_install_is_reported_not_taken_for_absent(monkeypatch):
    def broken(name):
        raise ModuleNotFoundError("No module named 'einops'", name="einops")
    monkeypatch.setattr(bench_public.importlib, "import_module", broken)
    with pytest.raises(RuntimeError, match="einops"):
        bench_public.public_kernels()


def test_narrowed_autotune_keeps_four_and_eight_warps_without_the_256_cap():
    configs = [SimpleNamespace(num_warps=w, maxnreg=r, num_stages=s) for s in (1, 2, 3) for w in (2, 4, 8)
               for r in (None, 128, 256)]
    pub = SimpleNamespace(forward_kernel=SimpleNamespace(configs=configs))
    assert bench_public.narrow_autotune(pub) == 12
    assert {(c.num_warps, c.maxnreg) for c in pub.forward_kernel.configs} == {(4, None), (4, 128), (8, None), (8, 128)}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit path")
def test_refuses_without_cuda(capsys):
    assert bench_public.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
