"""Triton decode attention vs its twin (float64) over a static cache: interpreter on CPU, Llama shapes on
the GPU. The cache past `pos` holds NaN and huge values: nothing of it may reach the output."""

import pytest
import torch

from kernels.attention import decode_attention, decode_attention_reference, default_splits

DEV = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (real-shape check)")


def _case(b, h, n_kv, d, ctx, pos, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, d, generator=g).to(DEV, dtype)
    k, v = (torch.randn(b, n_kv, ctx, d, generator=g).to(DEV, dtype) for _ in range(2))
    k[:, :, pos + 1:] = float("nan")
    v[:, :, pos + 1::2] = 1e30
    v[:, :, pos + 2::2] = float("nan")
    return q, k, v, torch.tensor(pos, device=DEV)


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# id: (b, heads, kv heads, head_dim, max_context, pos, dtype, splits)
CASES = {
    "gqa4-bf16-split-over-blocks": (2, 8, 2, 32, 150, 100, torch.bfloat16, 3),
    "first-position": (1, 4, 4, 16, 40, 0, torch.float32, 2),
    "last-position-gqa8": (1, 8, 1, 16, 70, 69, torch.float32, None),
    "more-splits-than-held-blocks": (2, 4, 2, 16, 256, 20, torch.float32, 4),
    "head-dim-8-one-split": (2, 4, 2, 8, 33, 31, torch.bfloat16, 1),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_decode_attention_matches_the_twin_and_ignores_the_rest_of_the_cache(case, nan_allocations):
    b, h, n_kv, d, ctx, pos, dt, splits = case
    q, k, v, p = _case(b, h, n_kv, d, ctx, pos, dt, seed=pos)
    got = decode_attention(q, k, v, p, num_splits=splits, block_n=16)
    want = decode_attention_reference(q.double(), k.double(), v.double(), p)
    assert got.dtype == dt and got.shape == q.shape and got.isfinite().all()
    assert _rel(got, want) < (1e-5 if dt == torch.float32 else 5e-3)


def test_one_split_writes_the_output_itself_bit_for_bit_as_the_merge(monkeypatch, nan_allocations):
    """With one split the partial kernel normalises and stores the output (one launch, no merge); the merge of
    a single partial divides the same sums, so both ways agree bit for bit."""
    from kernels import attention
    from kernels.mamba3.tl_utils import record_launches

    q, k, v, p = _case(3, 8, 2, 32, 70, 64, torch.bfloat16, seed=5)
    got = {}
    for direct in (True, False):
        monkeypatch.setattr(attention, "ONE_SPLIT_DIRECT", direct)
        with record_launches() as launches:
            decode_attention(q, k, v, p, num_splits=1, block_n=16)
        assert [kern.fn.__name__ for kern, *_ in launches] == (
            ["_partial_kernel"] if direct else ["_partial_kernel", "_merge_kernel"])
        got[direct] = decode_attention(q, k, v, p, num_splits=1, block_n=16)
    assert got[True].isfinite().all() and torch.equal(got[True], got[False])
    assert _rel(got[True], decode_attention_reference(q.double(), k.double(), v.double(), p)) < 5e-3


def test_default_splits_fill_the_gpu_only_when_batch_leaves_it_idle():
    assert default_splits(1, 8, 16384, 64) == 33  # 8 programs alone would leave 124 of 132 SMs idle
    assert default_splits(128, 8, 768, 64) == 1
    assert default_splits(1, 8, 100, 64) == 2  # never more slices than key blocks


def test_decode_attention_refuses_mismatched_shapes():
    q, k, v, p = _case(1, 6, 4, 16, 8, 3, torch.float32, seed=0)
    with pytest.raises(ValueError, match="multiple of KV heads"):
        decode_attention(q, k, v, p)
    with pytest.raises(ValueError, match="one dtype"):
        decode_attention(q[:, :4].contiguous(), k.double(), v.double(), p)


@gpu
@pytest.mark.parametrize("b,pos", [(1, 16383), (1, 700), (128, 767), (4, 5000)])
def test_decode_attention_llama_shapes_gpu(b, pos):
    ctx = 16384 if b < 128 else 1024
    q, k, v, p = _case(b, 32, 8, 64, ctx, pos, torch.bfloat16, seed=b)
    got = decode_attention(q, k, v, p)
    assert got.isfinite().all()
    assert _rel(got, decode_attention_reference(q.double(), k.double(), v.double(), p)) < 1e-2


@gpu
@pytest.mark.gpu
def test_one_split_attention_holds_its_register_cap_on_sm90_gpu(monkeypatch):
    """Llama-3.2-1B's attention at batch 128 takes one split and one launch: on sm_90 under `maxnreg`, which the
    built kernel honours (so 8 programs an SM fit, as timed: docs/benchmarks.md, twenty-sixth session); elsewhere
    uncapped."""
    import triton

    from kernels import attention

    built = []
    monkeypatch.setattr(attention, "launch", lambda kernel, grid, *a, **meta: built.append(
        (kernel, meta, kernel[grid](*a, **meta))))
    q, k, v, p = _case(128, 32, 8, 64, 1024, 767, torch.bfloat16, seed=0)
    got = decode_attention(q, k, v, p)
    assert _rel(got, decode_attention_reference(q.double(), k.double(), v.double(), p)) < 1e-2
    ((kernel, meta, compiled),) = built
    assert kernel is attention._partial_kernel and meta["DIRECT"]
    sm90 = torch.cuda.get_device_capability()[0] == 9
    assert ("maxnreg" in meta) == sm90
    if sm90:
        assert compiled.n_regs <= attention.ONE_SPLIT_MAXNREG
        if triton.__version__.startswith("3.6"):  # (Triton 3.7.1's capped build spills 8 bytes)
            assert compiled.n_spills == 0


@pytest.mark.parametrize("name", ["transformer-tiny", "hybrid-tiny"])
def test_a_model_decodes_on_the_triton_attention_path_like_on_sdpa(name):
    """The model's attention layers switched to impl "triton" (the factory builds that on CUDA only; here
    the interpreter runs it): prefill through the fused rotary + cache write and SDPA, then decode steps
    through the decode rotary and the split-K kernel, against the same model on SDPA throughout."""
    import copy

    from model.factory import build_model
    from model.hybrid import MHA
    from model.transformer import LlamaAttention

    ref = build_model(name, dtype=torch.float32, impl="chunked", seed=0).to(DEV)
    fast = copy.deepcopy(ref)
    attn = [m for m in fast.modules() if isinstance(m, (LlamaAttention, MHA))]
    assert attn
    for m in attn:
        m.impl = "triton"
    tokens = torch.randint(0, 256, (2, 14), generator=torch.Generator().manual_seed(1)).to(DEV)
    caches = [m.allocate_cache(batch=2, max_context=20) for m in (ref, fast)]
    # the prompt in two pieces: the second prefill continues from 5 held positions
    for lo, hi in ((0, 5), (5, 9)):
        want, got = (m.prefill(tokens[:, lo:hi], c) for m, c in zip((ref, fast), caches))
        assert _rel(got, want) < 1e-4
    for t in range(9, 14):
        want, got = (m.decode_step(tokens[:, t], c) for m, c in zip((ref, fast), caches))
        assert _rel(got, want) < 1e-4
    for held, ref_held in zip(caches[1].tensors(), caches[0].tensors()):
        assert _rel(held, ref_held) < 1e-5


def test_a_cpu_model_running_triton_attention_outside_the_interpreter_names_the_alternative(monkeypatch):
    """The factory refuses impl "triton" off CUDA; a model switched to it afterwards fails as clearly, in
    prefill and in decode (both run the rotary + cache write on a Triton kernel)."""
    from kernels.mamba3 import tl_utils
    from model.factory import build_model

    model = build_model("transformer-tiny", dtype=torch.float32, impl="chunked", seed=0)
    for layer in model.blocks():
        layer.self_attn.impl = "triton"
    cache = model.allocate_cache(batch=1, max_context=8)
    monkeypatch.setattr(tl_utils, "INTERPRETED", False)
    with pytest.raises(RuntimeError, match="impl='triton' needs a CUDA device, got cpu; use impl='chunked'"):
        model.prefill(torch.zeros(1, 3, dtype=torch.long), cache)
    with pytest.raises(RuntimeError, match="impl='triton' needs a CUDA device, got cpu; use impl='chunked'"):
        model.decode_step(torch.zeros(1, dtype=torch.long), cache)
