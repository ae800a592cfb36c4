"""The persistent product chain of the batch-1 experiment (kernels.bench_chain) under the interpreter."""

import pytest
import torch

from kernels.bench_chain import Chain
from kernels.mamba3.tl_utils import INTERPRETED

pytestmark = pytest.mark.skipif(not INTERPRETED, reason="CPU check under TRITON_INTERPRET=1")

SMALL = ((40, 16), (16, 40), (32, 16), (16, 32))  # (N, K): N of one product ≥ K of the next


def _run(way, **kw):
    chain = Chain(2, SMALL, device="cpu", seed=1)
    getattr(chain, way)(**kw)
    return chain


@pytest.mark.parametrize("way", ["launches", "gemv"])
def test_the_chain_matches_pytorch(way):
    chain = _run(way)
    want = Chain(2, SMALL, device="cpu", seed=1).reference()
    got = chain.output().float()
    assert got.shape == want.shape and not got.isnan().any()
    assert (got - want).abs().max() <= 2e-2 * want.abs().max()


def test_one_persistent_program_equals_one_launch_per_product():
    """The persistent walk (one program, so no other program to wait for) does each tile's arithmetic as the
    per-product launches do: the same bits, and the barrier counts one arrival per product."""
    persistent, launches = _run("persistent", programs=1), _run("launches")
    assert torch.equal(persistent.act, launches.act)
    assert persistent.bar.item() == len(persistent.shapes) - 1 and persistent.err.item() == 0  # none after the last


def test_a_restart_runs_the_chain_from_its_input_again():
    """The products overwrite both activation rows (row 0 is the input): a second run must start over."""
    chain = _run("launches")
    first = chain.output().clone()
    chain.launches()
    assert not torch.equal(chain.output(), first)  # from the last output, not the input
    chain.restart()
    chain.launches()
    assert torch.equal(chain.output(), first)


def test_a_barrier_that_cannot_complete_sets_the_error_flag_instead_of_hanging():
    """Two programs run one after the other under the interpreter, so the first waits for an arrival that
    never comes: after max_spins polls it flags the error and goes on."""
    chain = _run("persistent", programs=2, max_spins=3)
    assert chain.err.item() == 1


def test_chains_that_would_read_past_their_input_or_load_unaligned_rows_are_refused():
    with pytest.raises(ValueError, match="must cover the next one's K"):
        Chain(1, ((16, 16), (16, 32)), device="cpu")
    with pytest.raises(ValueError, match="multiple of 8"):
        Chain(1, ((20, 20), (20, 20)), device="cpu")


def test_weights_are_sliced_without_reading_the_device_offsets():
    """`weight` runs inside a CUDA-graph capture (the gemv way), where reading a device tensor is refused."""
    chain = Chain(2, SMALL, device="cpu", seed=1)
    want = [chain.weight(i).clone() for i in range(len(chain.shapes))]
    chain.offs = None  # any read of the device copy would now fail
    assert all(torch.equal(chain.weight(i), w) for i, w in enumerate(want))
