"""The ``torch`` dataflow: gather -> GEMM -> scatter-add, offsets batched by adaptive grouping.

This is the reference dataflow: plain torch ops, any device, any float dtype. For offset ``k``
with pairs ``(i, j)``: ``dst[j] += src[i] @ W[k]``. One routine serves the forward pass (src = x,
pairs in->out, W) and the input gradient (src = dy, pairs out->in, W^T); the weight gradient is
``dW[k] = x[i]^T @ dy[j]``, batched over the same groups. The identity offset of a submanifold
map (``i == j == arange``) is a single dense GEMM with no gather or scatter. Half-precision
inputs accumulate in float32.

The padded index matrices of each group are built once per map and direction and kept in
``kmap.plans`` (a map is reused by every layer of a stage and by the backward pass). Padding
rows gather row 0 and scatter into one extra, discarded output row, so no boolean masking (and
no host synchronisation) is needed per call. On CPU every step runs in cache-sized row blocks
(``CPU_BLOCK_BYTES``) through reused buffers, and layers with few channels sum each destination
row's products with ``embedding_bag`` instead of scattering them (``output_blocks``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparseconv.functional import output_blocks
from sparseconv.functional.grouping import plan_groups
from sparseconv.maps.kernel_map import KernelMap, PlanKind
from sparseconv.utils.precision import accumulation_dtype


@dataclass(frozen=True)
class GroupStep:
    """One GEMM of the plan: a single offset (pair range ``lo:hi``) or a padded group."""

    offsets: list[int]
    lo: int = 0
    hi: int = 0
    src_idx: torch.Tensor | None = None  # [G, L] for groups (padding: row 0)
    dst_idx: torch.Tensor | None = None  # [G, L] for groups (padding: the extra row n_dst)


@dataclass(frozen=True)
class Plan:
    steps: list[GroupStep]
    src_idx: torch.Tensor
    dst_idx: torch.Tensor
    n_dst: int
    identity_offset: int | None
    # set when every destination row receives exactly one pair (a transposed k == s conv, or the
    # input gradient of a strided k == s conv): the pair writing each row, so rows are written
    # once, with no zero fill and no scatter-add
    pair_of_row: torch.Tensor | None = None

    @property
    def injective(self) -> bool:
        return self.pair_of_row is not None


def _plan(kmap: KernelMap, reverse: bool, max_waste: float) -> Plan:
    """The cached plan of ``kmap`` read forward (in -> out) or in reverse (out -> in)."""
    return kmap.plan(
        PlanKind.TORCH_GROUPS, lambda: _build_plan(kmap, reverse, max_waste), reverse, max_waste
    )


def _build_plan(kmap: KernelMap, reverse: bool, max_waste: float) -> Plan:
    src_idx, dst_idx = (kmap.out_idx, kmap.in_idx) if reverse else (kmap.in_idx, kmap.out_idx)
    n_dst = kmap.n_in if reverse else kmap.n_out
    ptr = kmap.offset_ptr.tolist()
    ident = kmap.kernel_volume // 2 if kmap.submanifold else None
    sizes = [ptr[k + 1] - ptr[k] for k in range(len(ptr) - 1)]
    injective = ident is None and _one_pair_per_row(dst_idx, n_dst)
    steps = []
    # an injective plan writes each offset's rows directly: one step per offset, no padding
    groups = (
        [[k] for k, n in enumerate(sizes) if n > 0]
        if injective
        else plan_groups(sizes, max_waste, skip=ident)
    )
    for group in groups:
        if len(group) == 1:
            steps.append(GroupStep(group, ptr[group[0]], ptr[group[0] + 1]))
        else:
            s_pad, d_pad = _padded_group(group, ptr, src_idx, dst_idx, n_dst)
            steps.append(GroupStep(group, src_idx=s_pad, dst_idx=d_pad))
    pair_of_row = torch.argsort(dst_idx) if injective else None
    return Plan(steps, src_idx, dst_idx, n_dst, ident, pair_of_row)


def _one_pair_per_row(dst_idx: torch.Tensor, n_dst: int) -> bool:
    if dst_idx.numel() != n_dst or n_dst == 0:
        return False
    return bool((torch.bincount(dst_idx, minlength=n_dst) == 1).all())


def _padded_group(group, ptr, src_idx, dst_idx, n_dst):
    """``[G, max_n]`` index matrices of a group; padding gathers row 0, scatters to ``n_dst``."""
    longest = max(ptr[k + 1] - ptr[k] for k in group)
    s_idx = src_idx.new_zeros((len(group), longest))
    d_idx = dst_idx.new_full((len(group), longest), n_dst)
    for g, k in enumerate(group):
        n = ptr[k + 1] - ptr[k]
        s_idx[g, :n] = src_idx[ptr[k] : ptr[k + 1]]
        d_idx[g, :n] = dst_idx[ptr[k] : ptr[k + 1]]
    return s_idx, d_idx


# On CPU each step runs in blocks of rows (2 MiB of gathered inputs or products: about one
# core's L2), through buffers reused across blocks. A whole-step gather of a 100 k-voxel scan at
# C = 64 writes fresh tensors of tens of MB: their page faults cost more than the copy, and the
# GEMM then streams them back from DRAM. CUDA keeps whole steps (one launch each).
CPU_BLOCK_BYTES = 2 << 20
MIN_BLOCK_ROWS = 256


def _block_rows(src: torch.Tensor, c_out: int) -> int | None:
    """Rows per block on CPU for float32/float64 inputs; ``None`` runs each step whole."""
    if src.device.type != "cpu" or src.dtype != accumulation_dtype(src.dtype):
        return None
    return max(MIN_BLOCK_ROWS, CPU_BLOCK_BYTES // (src.element_size() * max(src.shape[1], c_out)))


class _Blocks:
    """Reusable gather and product buffers for one call: ``product`` = ``src[idx] @ w``."""

    def __init__(self, src: torch.Tensor, c_out: int, rows: int | None):
        self.src, self.c_out, self.rows = src, c_out, rows
        self.gathered = self.products = src.new_empty((0, 0))

    def product(
        self, idx: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``src[idx] @ w`` with ``idx`` ``[n]`` (``w`` 2-D) or ``[G, n]`` (``w`` ``[G, ...]``).

        Written into ``out`` when given (2-D ``w`` and an input dtype equal to ``out``'s only).
        """
        mm = torch.mm if w.dim() == 2 else torch.bmm
        if self.rows is None:
            gathered = self.src.index_select(0, idx.reshape(-1))
            gathered = gathered.view(*idx.shape, self.src.shape[1])
            return mm(gathered, w) if out is None else mm(gathered, w, out=out)
        n = idx.numel()
        if n > self.gathered.shape[0]:  # a group of G offsets takes at least G rows
            self.gathered = self.src.new_empty((max(n, self.rows), self.src.shape[1]))
            self.products = self.src.new_empty((max(n, self.rows), self.c_out))
        torch.index_select(self.src, 0, idx.reshape(-1), out=self.gathered[:n])
        gathered = self.gathered[:n].view(*idx.shape, self.src.shape[1])
        return mm(
            gathered, w, out=self.products[:n].view(*idx.shape, self.c_out) if out is None else out
        )


def _step_blocks(step: GroupStep, plan: Plan, rows: int | None):
    """``(src_idx, dst_idx)`` blocks of a step: ``[n]`` for one offset, ``[G, n]`` for a group."""
    if step.src_idx is None:
        src_idx, dst_idx = plan.src_idx[step.lo : step.hi], plan.dst_idx[step.lo : step.hi]
        per_block = rows or max(len(src_idx), 1)
        for lo in range(0, len(src_idx), per_block):
            yield src_idx[lo : lo + per_block], dst_idx[lo : lo + per_block]
        return
    g, length = step.src_idx.shape
    per_block = max(1, rows // g) if rows else length
    for lo in range(0, length, per_block):
        yield step.src_idx[:, lo : lo + per_block], step.dst_idx[:, lo : lo + per_block]


def _step_weight(step: GroupStep, weight: torch.Tensor) -> torch.Tensor:
    return weight[step.offsets[0]] if step.src_idx is None else weight[step.offsets]


def gather_gemm_scatter(src: torch.Tensor, weight: torch.Tensor, plan: Plan) -> torch.Tensor:
    """``dst[dst_idx] += src[src_idx] @ weight[k]`` over all offsets; returns ``[n_dst, Cout]``."""
    acc = accumulation_dtype(src.dtype)
    c_out = weight.shape[2]
    rows = _block_rows(src, c_out)
    blocks = _Blocks(src, c_out, rows)
    if plan.injective:
        return _gather_gemm_store(blocks, weight, plan, acc)
    out = torch.empty((plan.n_dst + 1, c_out), dtype=acc, device=src.device)
    if plan.identity_offset is not None:
        _dense_mm(src, weight[plan.identity_offset], out[: plan.n_dst], rows)
        out[plan.n_dst] = 0
    else:
        out.zero_()
    for step in plan.steps:
        w = _step_weight(step, weight)
        for src_idx, dst_idx in _step_blocks(step, plan, rows):
            part = blocks.product(src_idx, w)
            out.index_add_(0, dst_idx.reshape(-1), part.reshape(-1, c_out).to(acc))
    return out[: plan.n_dst]


def _dense_mm(src: torch.Tensor, w: torch.Tensor, out: torch.Tensor, rows: int | None) -> None:
    """``out = src @ w`` (the identity offset), in row blocks on CPU to stay in cache."""
    if rows is None:
        out.copy_(torch.mm(src, w))
        return
    for lo in range(0, src.shape[0], rows):
        torch.mm(src[lo : lo + rows], w, out=out[lo : lo + rows])


def _gather_gemm_store(blocks: _Blocks, weight: torch.Tensor, plan: Plan, acc) -> torch.Tensor:
    """``dst[dst_idx] = src[src_idx] @ weight[k]``: each row is written by exactly one pair.

    Each offset's product lands in its own contiguous slice of a pair-ordered buffer, then one
    row gather puts the buffer in destination order. Two parallel gathers replace a zero fill and
    a scatter (on CPU ``index_add_`` and ``index_copy_`` move one element at a time, far below
    the memory bandwidth that a row gather reaches).
    """
    src = blocks.src
    buf = torch.empty((plan.src_idx.numel(), weight.shape[2]), dtype=acc, device=src.device)
    for step in plan.steps:  # single-offset steps only (the plan is built with no grouping)
        w, lo = weight[step.offsets[0]], step.lo
        for src_idx, _ in _step_blocks(step, plan, blocks.rows):
            rows = buf[lo : lo + len(src_idx)]
            if buf.dtype == src.dtype:
                blocks.product(src_idx, w, out=rows)
            else:
                rows.copy_(blocks.product(src_idx, w))
            lo += len(src_idx)
    return buf.index_select(0, plan.pair_of_row)


# At or below this many channels (the larger of Cin and Cout) the CPU path sums each destination
# row's products with embedding_bag (output_blocks) instead of index_add_, which adds one
# element at a time on CPU; from C = 48 on, the scatter-add path's larger GEMMs make it level or
# ahead (figures in docs/benchmarks.md).
OUTPUT_BLOCKS_MAX_CHANNELS = 32

ALGORITHMS = ("gather_scatter", "output_blocks")


def output_blocks_unsupported(src: torch.Tensor) -> str:
    """Why the output-block algorithm cannot run on ``src`` ('' when it can)."""
    if src.device.type != "cpu":
        return f"it is a CPU algorithm (its block layout lives on the host), got {src.device}"
    if src.dtype != accumulation_dtype(src.dtype):
        return f"it sums in the operands' dtype, so it takes float32/float64, got {src.dtype}"
    return ""


def choose_algorithm(src: torch.Tensor, weight: torch.Tensor, plan: Plan) -> str:
    """The planner of the ``torch`` dataflow: which plain-torch algorithm runs this call.

    ``output_blocks`` on CPU for float32/float64 layers of at most
    ``OUTPUT_BLOCKS_MAX_CHANNELS`` channels whose map is not injective; ``gather_scatter``
    otherwise (on an injective map it stores each row once instead of scatter-adding).
    """
    small = max(weight.shape[1], weight.shape[2]) <= OUTPUT_BLOCKS_MAX_CHANNELS
    if not plan.injective and small and not output_blocks_unsupported(src):
        return "output_blocks"
    return "gather_scatter"


def _run(src, weight, kmap, reverse, max_waste, algorithm: str | None) -> torch.Tensor:
    plan = _plan(kmap, reverse, max_waste)
    algorithm = algorithm or choose_algorithm(src, weight, plan)
    if algorithm == "output_blocks":
        pairs = output_blocks.block_pairs(weight.shape[1], weight.shape[2], src.element_size())
        return output_blocks.gemm_sum(src, weight, output_blocks.plan(kmap, reverse, pairs))
    return gather_gemm_scatter(src, weight, plan)


def forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    kmap: KernelMap,
    max_waste: float = 0.25,
    algorithm: str | None = None,
) -> torch.Tensor:
    """``y = conv(x, W)``; ``algorithm`` None lets :func:`choose_algorithm` decide."""
    return _run(x, weight, kmap, False, max_waste, algorithm)


def backward_input(
    dy: torch.Tensor,
    weight: torch.Tensor,
    kmap: KernelMap,
    max_waste: float = 0.25,
    algorithm: str | None = None,
) -> torch.Tensor:
    """``dx = conv^T(dy, W^T)`` over the same map read in reverse."""
    return _run(dy, weight.transpose(1, 2), kmap, True, max_waste, algorithm)


def backward_weight(
    x: torch.Tensor, dy: torch.Tensor, kmap: KernelMap, max_waste: float = 0.25
) -> torch.Tensor:
    """``dW[k] = x[in_k]^T @ dy[out_k]`` over the forward plan's groups (float32 for half inputs).

    Padding rows gather ``x[0]`` against the appended zero row of ``dy``, so they add nothing.
    """
    acc = accumulation_dtype(x.dtype)
    plan = _plan(kmap, False, max_waste)
    dw = torch.zeros((kmap.kernel_volume, x.shape[1], dy.shape[1]), dtype=acc, device=x.device)
    if plan.identity_offset is not None:
        dw[plan.identity_offset] = torch.mm(x.t(), dy).to(acc)
    dy_ext = torch.cat([dy, dy.new_zeros((1, dy.shape[1]))])
    rows = _block_rows(x, dy.shape[1])
    for step in plan.steps:
        dw_step = (
            dw[step.offsets[0]] if step.src_idx is None else dw.new_zeros(dw[step.offsets].shape)
        )
        for src_idx, dst_idx in _step_blocks(step, plan, rows):
            xs = x.index_select(0, src_idx.reshape(-1)).view(*src_idx.shape, x.shape[1])
            ds = dy_ext.index_select(0, dst_idx.reshape(-1)).view(*dst_idx.shape, dy.shape[1])
            dw_step += (xs.t() @ ds if xs.dim() == 2 else torch.bmm(xs.transpose(1, 2), ds)).to(acc)
        if step.src_idx is not None:
            dw[step.offsets] = dw_step
    return dw
