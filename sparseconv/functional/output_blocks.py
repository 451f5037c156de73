"""CPU execution of the torch dataflow: products per block of destination rows, summed by bag.

On CPU ``index_add_`` (and ``scatter_add_``) add one element at a time: at C = 64 the
scatter-add of a submanifold layer's pairs costs as much as their GEMMs. ``embedding_bag`` in
``sum`` mode is the same reduction read the other way round: each destination row gathers and
sums its own products, with vectorised kernels and no write conflicts. So on CPU the pairs are
processed in blocks of destination rows: the block's source rows are gathered once, multiplied
per offset into a cache-sized product buffer (its rows in offset-major order, so each offset is
one GEMM), and ``embedding_bag`` sums every row's products into the output. The identity offset
of a submanifold map needs no gather (its source rows are the block's own rows).

The block layout depends only on the map, the direction and the block size, so it is built once
and kept in ``kmap.plans``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparseconv.maps.kernel_map import KernelMap, PlanKind

# pair products per block: about 4 MiB of float32 at C = 64, so a block's gathered inputs and
# products stay in the last-level cache between the GEMMs and the bag sum
PAIRS_BYTES = 4 << 20
MIN_BLOCK_PAIRS = 1024


@dataclass(frozen=True)
class OutputBlock:
    """Destination rows ``lo:hi`` and the pairs writing them."""

    lo: int
    hi: int
    src_idx: torch.Tensor  # source row of every pair, offset-major (a GEMM per offset)
    offsets: list[int]  # the offsets with pairs here, in src_idx order
    sizes: list[int]  # their pair counts
    bag_idx: torch.Tensor  # product rows grouped by destination row, in row order
    bag_offsets: torch.Tensor  # where each destination row's bag starts in bag_idx


@dataclass(frozen=True)
class OutputPlan:
    blocks: list[OutputBlock]
    n_dst: int
    identity_offset: int | None
    max_pairs: int


def block_pairs(c_in: int, c_out: int, element_size: int) -> int:
    """Pairs per block for these channel counts (bounded below so small C is not call-bound)."""
    return max(MIN_BLOCK_PAIRS, PAIRS_BYTES // (element_size * max(c_in, c_out)))


def plan(kmap: KernelMap, reverse: bool, pairs_per_block: int) -> OutputPlan:
    """The cached block layout of ``kmap`` read forward (in -> out) or in reverse (out -> in)."""
    return kmap.plan(
        PlanKind.OUTPUT_BLOCKS,
        lambda: _build(kmap, reverse, pairs_per_block),
        reverse,
        pairs_per_block,
    )


def _build(kmap: KernelMap, reverse: bool, pairs_per_block: int) -> OutputPlan:
    src_idx, dst_idx = (kmap.out_idx, kmap.in_idx) if reverse else (kmap.in_idx, kmap.out_idx)
    n_dst = kmap.n_in if reverse else kmap.n_out
    volume = kmap.kernel_volume
    offset = kmap.offset_of_pair()
    # row-major, offset-minor: a destination row has at most one pair per offset
    by_row = torch.argsort(dst_idx * volume + offset)
    row_ptr = torch.zeros(n_dst + 1, dtype=torch.long)
    row_ptr[1:] = torch.cumsum(torch.bincount(dst_idx, minlength=n_dst), 0)
    blocks, lo = [], 0
    while lo < n_dst:
        # rows lo:hi hold at most pairs_per_block pairs (at least one row per block)
        limit = int(row_ptr[lo]) + pairs_per_block
        hi = max(lo + 1, int(torch.searchsorted(row_ptr, limit, right=True)) - 1)
        blocks.append(_block(lo, hi, by_row, row_ptr, src_idx, offset, volume))
        lo = hi
    ident = volume // 2 if kmap.submanifold else None
    max_pairs = max((len(b.src_idx) for b in blocks), default=0)
    return OutputPlan(blocks, n_dst, ident, max_pairs)


def _block(lo, hi, by_row, row_ptr, src_idx, offset, volume) -> OutputBlock:
    start, end = int(row_ptr[lo]), int(row_ptr[hi])
    pairs = by_row[start:end]
    to_offset_major = torch.argsort(offset[pairs], stable=True)  # keeps row order per offset
    counts = torch.bincount(offset[pairs], minlength=volume).tolist()
    offsets = [k for k, n in enumerate(counts) if n]
    bag_idx = torch.empty_like(to_offset_major)
    bag_idx[to_offset_major] = torch.arange(len(pairs))
    bag_offsets = row_ptr[lo:hi] - start
    src_rows = src_idx[pairs[to_offset_major]]
    return OutputBlock(
        lo, hi, src_rows, offsets, [counts[k] for k in offsets], bag_idx, bag_offsets
    )


def gemm_sum(src: torch.Tensor, weight: torch.Tensor, plan: OutputPlan) -> torch.Tensor:
    """``out[j] = sum over pairs (i, j, k) of src[i] @ weight[k]``; ``[n_dst, Cout]``."""
    c_out = weight.shape[2]
    out = src.new_empty((plan.n_dst, c_out))
    gathered = src.new_empty((plan.max_pairs, src.shape[1]))
    products = src.new_empty((plan.max_pairs, c_out))
    per_offset = weight.unbind(0)
    for b in plan.blocks:
        n = len(b.src_idx)
        torch.index_select(src, 0, b.src_idx, out=gathered[:n])
        for k, rows, part in zip(
            b.offsets, gathered[:n].split(b.sizes), products[:n].split(b.sizes)
        ):
            if k == plan.identity_offset:
                rows = src[b.lo : b.hi]
            torch.mm(rows, per_offset[k], out=part)
        out[b.lo : b.hi] = F.embedding_bag(b.bag_idx, products[:n], b.bag_offsets, mode="sum")
    return out
