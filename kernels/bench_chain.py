"""Batch-1 experiment (CUDA only): does one persistent launch stream a decode step's one-row products faster
than a graph of one launch per product?

At batch 1 a decode step is its weights read once; on an H200 the one-row products (`kernels.gemv`) read them
at 0.69 (Mamba-3 SISO 1.5B) to 0.79 (Llama-3.2-1B) of the copy rate, kernel by kernel, with programmatic
dependent launch already overlapping each launch with the kernel before (docs/benchmarks.md, sixteenth
session). What is left is each product's ramp-up and tail. This times a chain of products shaped like the
SISO 1.5B layer's four (in_proj 8672 × 2048, out_proj 2048 × 4096, fc1 8192 × 2048, fc2 2048 × 4096) over 24
layers, 2.46 GB of distinct weights, each product's input the previous one's output, three ways, each
replayed from a CUDA graph:

- `gemv`: the model's `kernels.gemv.linear` per product (its tuned tiles, with PDL);
- `launches`: this module's product kernel launched once per product (one tile shape for all);
- `persistent`: the same kernel launched once, its programs all resident, walking every product's tiles and
  meeting at a grid barrier between products (an arrival count in global memory, a release fence before
  arriving; activations read past L1).

If `persistent` beats `launches` by a wide margin, a persistent decode layer is the way to the batch-1
targets; if not, each kernel's streaming rate is. Run it on the GPU:

    python -m kernels.bench_chain                    # 24 layers, 2 programs per SM
    python -m kernels.bench_chain --per-sm 1 2 4 --layers 8

A barrier that waits longer than `--max-spins` polls (programs not all resident) sets an error flag instead of
hanging, and the run says so.
"""

from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.mamba3.tl_utils import INTERPRETED, cast, launch

SISO_LAYER = ((8672, 2048), (2048, 4096), (8192, 2048), (2048, 4096))  # (N, K) of in_proj, out_proj, fc1, fc2
BLOCK_N, BLOCK_K, NUM_WARPS = 8, 512, 8


@triton.jit
def _fence_acq_rel(v):
    """A gpu-scope acquire-release fence (`v` is returned: the asm needs an operand)."""
    return tl.inline_asm_elementwise("fence.acq_rel.gpu; mov.b32 $0, $1;", "=r,r", [v], dtype=tl.int32,
                                     is_pure=False, pack=1)


@triton.jit
def _chain_kernel(w_ptr, offs_ptr, ns_ptr, ks_ptr, act_ptr, bar_ptr, err_ptr, first, count, max_n, programs,
                  max_spins, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PERSISTENT: tl.constexpr,
                  EMULATE: tl.constexpr):
    """Products first … first + count − 1 of the chain: product i reads x = act[i % 2, :K_i] and writes
    y = act[(i + 1) % 2, :N_i] = x·W_iᵀ (bf16, fp32 sums), W_i the (N_i, K_i) rows at w_ptr + offs[i].
    Program p takes tiles p, p + programs, … of BLOCK_N rows; PERSISTENT: then waits at the grid barrier
    (bar counts arrivals; every program arrives once per product) before the next product."""
    pid = tl.program_id(0)
    rows = tl.arange(0, BLOCK_N)
    for i in range(first, first + count):
        n_out = tl.load(ns_ptr + i)
        k_in = tl.multiple_of(tl.load(ks_ptr + i), 8)  # Chain keeps K and the offsets multiples of 8: 16-byte loads
        w_base = w_ptr + tl.multiple_of(tl.load(offs_ptr + i), 8)
        x_ptr = act_ptr + (i % 2) * max_n
        y_ptr = act_ptr + ((i + 1) % 2) * max_n
        for t in range(pid, tl.cdiv(n_out, BLOCK_N), programs):
            n = t * BLOCK_N + rows
            nm = n < n_out
            w_rows = w_base + n.to(tl.int64)[:, None] * k_in
            k = tl.arange(0, BLOCK_K)
            acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
            w = tl.load(w_rows + k[None, :], mask=nm[:, None] & (k < k_in)[None, :], other=0.0)
            for k0 in range(0, k_in, BLOCK_K):  # one tile ahead, as kernels.gemv's one-row path
                xv = tl.load(x_ptr + k, mask=k < k_in, other=0.0, cache_modifier=".cg")
                k += BLOCK_K
                w_next = tl.load(w_rows + k[None, :], mask=nm[:, None] & (k < k_in)[None, :], other=0.0)
                acc += w.to(tl.float32) * xv.to(tl.float32)[None, :]
                w = w_next
            tl.store(y_ptr + n, cast(tl.sum(acc, axis=1), y_ptr.dtype.element_ty, EMULATE), mask=nm)
        if PERSISTENT and i + 1 < first + count:  # no barrier after the last product
            tl.debug_barrier()  # every thread's stores of this product before the program arrives
            if not EMULATE:
                _fence_acq_rel(pid)
            target = (i - first + 1) * programs
            seen = tl.atomic_add(bar_ptr, 1, sem="acq_rel", scope="gpu") + 1
            spins = 0
            if tl.load(err_ptr, volatile=True) != 0:  # an earlier barrier timed out: finish without waiting
                spins = max_spins
            while (seen < target) & (spins < max_spins):
                seen = tl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu")
                spins += 1
            if seen < target:
                tl.atomic_xchg(err_ptr, 1)
            tl.debug_barrier()


class Chain:
    """`layers` × the (N, K) products of `layer`, their weights in one buffer (random, N(0, 1/K)), two
    activation rows (`act`, x in row 0 at the start)."""

    def __init__(self, layers: int, layer=SISO_LAYER, device="cuda", seed: int = 0):
        shapes = [s for _ in range(layers) for s in layer]
        if any(n < k for (n, _), (_, k) in zip(shapes, shapes[1:] + shapes[:1])):
            raise ValueError(f"each product's N must cover the next one's K (its input): {layer}")
        if any(k % 8 for _, k in shapes):
            raise ValueError(f"every K must be a multiple of 8 (16-byte weight rows): {layer}")
        sizes = [n * k for n, k in shapes]
        offs = [0]
        for s in sizes[:-1]:
            offs.append(offs[-1] + s)
        g = torch.Generator(device="cpu").manual_seed(seed)
        self.shapes = shapes
        self.host_offs = offs  # `weight` slices by these: reading the device copy would sync inside a capture
        self.w = torch.empty(sum(sizes), dtype=torch.bfloat16, device=device)
        for (n, k), o in zip(shapes, offs):  # filled per product: a 2.46 GB draw at once would need fp32 twice
            self.w[o:o + n * k] = (torch.randn(n * k, generator=g) / k**0.5).to(device, torch.bfloat16)
        self.offs = torch.tensor(offs, dtype=torch.int64, device=device)
        self.ns = torch.tensor([n for n, _ in shapes], dtype=torch.int32, device=device)
        self.ks = torch.tensor([k for _, k in shapes], dtype=torch.int32, device=device)
        self.max_n = max(max(n, k) for n, k in shapes)
        self.act = torch.zeros(2, self.max_n, dtype=torch.bfloat16, device=device)
        self.act[0, :shapes[0][1]] = torch.randn(shapes[0][1], generator=g).to(device, torch.bfloat16)
        self.start = self.act.clone()  # the products overwrite both rows: `restart` puts the input back
        self.bar = torch.zeros(1, dtype=torch.int32, device=device)
        self.err = torch.zeros(1, dtype=torch.int32, device=device)

    def restart(self) -> None:
        """The activation rows as built (the chain's input in row 0), the barrier and its error flag cleared."""
        self.act.copy_(self.start)
        self.bar.zero_()
        self.err.zero_()

    @property
    def nbytes(self) -> int:
        return self.w.numel() * self.w.element_size()

    def weight(self, i: int) -> Tensor:
        n, k = self.shapes[i]
        o = self.host_offs[i]
        return self.w[o:o + n * k].view(n, k)

    def output(self) -> Tensor:
        """The last product's output row."""
        return self.act[len(self.shapes) % 2, :self.shapes[-1][0]]

    def _launch(self, grid: int, first: int, count: int, persistent: bool, max_spins: int) -> None:
        launch(_chain_kernel, (grid,), self.w, self.offs, self.ns, self.ks, self.act, self.bar, self.err, first,
               count, self.max_n, grid, max_spins, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, PERSISTENT=persistent,
               EMULATE=INTERPRETED, num_warps=NUM_WARPS)

    def launches(self) -> None:
        """One launch per product, one program per tile."""
        for i, (n, _) in enumerate(self.shapes):
            self._launch(triton.cdiv(n, BLOCK_N), i, 1, False, 0)

    def persistent(self, programs: int, max_spins: int = 1 << 16) -> None:
        """One launch of `programs` programs (all must be resident) over every product."""
        self.bar.zero_()
        self._launch(programs, 0, len(self.shapes), True, max_spins)

    def gemv(self) -> None:
        """The model's one-row product per product (kernels.gemv.linear, its tuned tiles)."""
        from kernels import gemv

        for i, (n, k) in enumerate(self.shapes):
            gemv.linear(self.act[i % 2, :k].view(1, k), self.weight(i), out=self.act[(i + 1) % 2, :n].view(1, n))

    def reference(self) -> Tensor:
        """The chain in PyTorch from the same input: each product's output rounded to bf16."""
        x = self.start[0].float()
        for i, (_, k) in enumerate(self.shapes):  # product i reads the first K_i of the row before
            x = (self.weight(i).float() @ x[:k]).to(torch.bfloat16).float()
        return x


def resident_programs(chain: Chain, per_sm: int, max_spins: int) -> int:
    """per_sm programs on each SM, checked against the built kernel's registers, shared memory and threads."""
    props = torch.cuda.get_device_properties(chain.w.device)
    programs = per_sm * props.multi_processor_count
    # built with the launch's own values (an int argument equal to 1 would be compiled in as a constant)
    built = _chain_kernel.warmup(chain.w, chain.offs, chain.ns, chain.ks, chain.act, chain.bar, chain.err, 0,
                                 len(chain.shapes), chain.max_n, programs, max_spins, BLOCK_N=BLOCK_N,
                                 BLOCK_K=BLOCK_K, PERSISTENT=True, EMULATE=False, num_warps=NUM_WARPS, grid=(1,))
    built._init_handles()  # loads the binary: its register count is known from then
    by_regs = getattr(props, "regs_per_multiprocessor", 65536) // max(1, built.n_regs * 32 * NUM_WARPS)
    by_smem = props.shared_memory_per_multiprocessor // (built.metadata.shared + 1024)  # + the 1 KB each block holds
    fits = min(by_regs, by_smem, props.max_threads_per_multi_processor // (32 * NUM_WARPS))
    if per_sm > fits:
        raise ValueError(f"{per_sm} programs per SM do not fit: {built.n_regs} registers, "
                         f"{built.metadata.shared} B shared memory allow {fits}")
    return programs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--per-sm", type=int, nargs="+", default=[2], help="persistent programs per SM")
    ap.add_argument("--max-spins", type=int, default=1 << 16, help="polls before a barrier gives up (~0.35 µs each)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 1
    from kernels.bench import measure_copy_bytes_per_s, time_graph_ms

    bw = measure_copy_bytes_per_s()
    chain = Chain(args.layers)
    want = chain.reference()
    print(f"{torch.cuda.get_device_name()}: copy {bw / 1e12:.2f} TB/s; {len(chain.shapes)} products, "
          f"{chain.nbytes / 1e9:.2f} GB of weights, floor {chain.nbytes / bw * 1e6:.0f} µs")
    ways = [("gemv (model's, PDL)", chain.gemv, True), ("launches", chain.launches, False)]
    for per_sm in args.per_sm:
        programs = resident_programs(chain, per_sm, args.max_spins)
        ways.append((f"persistent, {per_sm}/SM", lambda p=programs: chain.persistent(p, args.max_spins), False))
    for label, fn, pdl in ways:
        chain.restart()  # one eager run from the input first: its output checked, a barrier that timed out caught
        fn()
        torch.cuda.synchronize()
        got = chain.output().float()
        err = (got - want).abs().max().item() / want.abs().max().item()
        if chain.err.item():
            print(f"{label:24s} BARRIER TIMED OUT (programs not all resident?): not timed")
            continue
        us = time_graph_ms(fn, calls=1, pdl=pdl) * 1e3  # replays compute from whatever the rows hold: same bytes
        print(f"{label:24s} {us:9.1f} µs  {chain.nbytes / (us * 1e-6) / 1e12:5.2f} TB/s  "
              f"{chain.nbytes / bw * 1e6 / us:5.2f} of copy  max rel err {err:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
