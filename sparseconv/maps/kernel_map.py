"""``KernelMap``: the input/output pairs of a sparse convolution, grouped by kernel offset.

A pair ``(in_idx[p], out_idx[p])`` with ``offset_ptr[k] <= p < offset_ptr[k+1]`` means
``out_feats[out_idx] += in_feats[in_idx] @ W[k]``. Within an offset the pairs are sorted by
``out_idx``, so every mapper and every device produces the same arrays (tests compare them with
``==``). The output-stationary dataflow wants the same information per output row instead,
``nbmap[N_out, K]``; it is derived lazily from the CSR arrays the first time it is asked for.

Forward rule (pairs exist where both coordinates exist)::

    strided / submanifold:  in = out + delta * dilation * tensor_stride_in
    transposed:             out = in + delta * dilation * tensor_stride_out

For a submanifold map with a symmetric kernel the pairs of ``-delta`` are the pairs of ``delta``
swapped, so only half of the offsets are searched and the centre offset is the identity.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import torch


class PlanKind(enum.Enum):
    """Every index layout that code derives from a map and keeps in ``KernelMap.plans``.

    One place names them all, so two modules can never store different layouts under one key.
    """

    TRANSPOSED = "the transposed map (input gradient)"
    TORCH_GROUPS = "padded offset groups of the torch gather-scatter algorithm"
    OUTPUT_BLOCKS = "destination-row blocks of the torch output-block algorithm"
    GATHER_SCATTER_BLOCKS = "per-program pair blocks of the Triton gather-scatter kernel"
    OFFSET_PTR_ON_DEVICE = "offset_ptr copied to the map's device"
    ROW_ORDER = "output rows in neighbour-mask order (Triton implicit GEMM)"
    OFFSET_SUBSET = "the map restricted to some kernel offsets (kernel-offset pruning)"
    CPU_TILE_USES = "calls of the CPU kernels per tile size before the map had tile lists"
    CPU_TILE_LISTS = "every tile's neighbour lists for one tile size (CPU implicit GEMM)"


class KernelMap:
    """The pairs of one sparse conv, held as CSR lists, as a neighbour table, or both.

    A map built by the C mapper starts as the neighbour table ``nbmap`` and derives the CSR lists
    the first time ``in_idx`` / ``out_idx`` / ``offset_ptr`` is read (inference with the
    implicit-GEMM dataflows never reads them); a map built as CSR derives ``nbmap`` on demand.
    """

    def __init__(
        self,
        in_idx: torch.Tensor | None,
        out_idx: torch.Tensor | None,
        offset_ptr: torch.Tensor | None,
        out_coords: torch.Tensor,
        n_in: int,
        offsets: list[tuple[int, int, int]],
        submanifold: bool = False,
        nbmap: torch.Tensor | None = None,
    ) -> None:
        if (in_idx is None or out_idx is None or offset_ptr is None) and nbmap is None:
            raise ValueError("a KernelMap needs its CSR pair lists or its neighbour table")
        self._in_idx, self._out_idx, self._offset_ptr = in_idx, out_idx, offset_ptr
        self.out_coords = out_coords  # int32 [N_out, 4]
        self.n_in = n_in
        self.offsets = offsets  # kernel units, weight order
        self.submanifold = submanifold
        self._nbmap = nbmap
        # derived index layouts that dataflows build once per map (e.g. padded offset groups)
        self.plans: dict = {}

    @classmethod
    def from_nbmap(
        cls,
        nbmap: torch.Tensor,
        out_coords: torch.Tensor,
        n_in: int,
        offsets: list[tuple[int, int, int]],
        submanifold: bool = False,
    ) -> KernelMap:
        """A map held as its neighbour table (int32 ``[N_out, K]``, -1 where absent)."""
        return cls(None, None, None, out_coords, n_in, offsets, submanifold, nbmap=nbmap)

    def __repr__(self) -> str:
        return (
            f"KernelMap(n_in={self.n_in}, n_out={self.n_out}, K={self.kernel_volume}, "
            f"submanifold={self.submanifold})"
        )

    @property
    def in_idx(self) -> torch.Tensor:
        """int64 ``[P]``: the input row of every pair."""
        if self._in_idx is None:
            self._csr()
        return self._in_idx  # type: ignore[return-value]

    @property
    def out_idx(self) -> torch.Tensor:
        """int64 ``[P]``: the output row of every pair."""
        if self._out_idx is None:
            self._csr()
        return self._out_idx  # type: ignore[return-value]

    @property
    def offset_ptr(self) -> torch.Tensor:
        """int64 ``[K + 1]`` on CPU: CSR over offsets (sizes are read often)."""
        if self._offset_ptr is None:
            self._csr()
        return self._offset_ptr  # type: ignore[return-value]

    @property
    def has_csr(self) -> bool:
        return self._in_idx is not None

    def _csr(self) -> None:
        from sparseconv.maps.tables import csr_from_nbmap

        self._in_idx, self._out_idx, self._offset_ptr = csr_from_nbmap(self._nbmap)

    def plan(self, kind: PlanKind, build: Callable[[], Any], *params: object) -> Any:
        """The layout of ``kind`` (and ``params``) in ``plans``, built by ``build()`` on first use.

        Dataflows derive index layouts from a map (padded groups, pair blocks, row orders); a map
        serves every layer of a stage and the backward pass, so each is built once.
        """
        if not isinstance(kind, PlanKind):
            raise TypeError(f"plan kinds are PlanKind members, got {kind!r}")
        key = (kind, *params)
        if key not in self.plans:
            self.plans[key] = build()
        return self.plans[key]

    @property
    def kernel_volume(self) -> int:
        return len(self.offsets)

    @property
    def n_out(self) -> int:
        return int(self.out_coords.shape[0])

    @property
    def sizes(self) -> list[int]:
        """Number of pairs per offset."""
        return (self.offset_ptr[1:] - self.offset_ptr[:-1]).tolist()

    @property
    def device(self) -> torch.device:
        return self.out_coords.device

    def pairs(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = int(self.offset_ptr[k]), int(self.offset_ptr[k + 1])
        return self.in_idx[lo:hi], self.out_idx[lo:hi]

    def offset_of_pair(self) -> torch.Tensor:
        """int64 ``[P]``: the kernel offset index of every pair."""
        counts = self.offset_ptr[1:] - self.offset_ptr[:-1]
        return torch.repeat_interleave(
            torch.arange(self.kernel_volume, device=self.device), counts.to(self.device)
        )

    @property
    def nbmap(self) -> torch.Tensor:
        """int32 ``[N_out, K]``: input row feeding output ``j`` through offset ``k``, else -1."""
        if self._nbmap is None:
            nb = torch.full(
                (self.n_out, self.kernel_volume), -1, dtype=torch.int32, device=self.device
            )
            nb[self.out_idx, self.offset_of_pair()] = self.in_idx.int()
            self._nbmap = nb
        return self._nbmap

    def transposed(self, out_coords: torch.Tensor) -> KernelMap:
        """The map of the transposed conv: same pairs, inputs and outputs swapped, re-sorted."""
        if not self.has_csr:
            from sparseconv.maps.tables import transpose_nbmap

            nb = transpose_nbmap(self._nbmap, self.n_in)
            return KernelMap.from_nbmap(nb, out_coords, self.n_out, list(self.offsets))
        k_of = self.offset_of_pair()
        order = torch.argsort(k_of * max(self.n_in, 1) + self.in_idx, stable=True)
        return KernelMap(
            in_idx=self.out_idx[order],
            out_idx=self.in_idx[order],
            offset_ptr=self.offset_ptr.clone(),
            out_coords=out_coords,
            n_in=self.n_out,
            offsets=list(self.offsets),
        )

    def select_offsets(self, kept: tuple[int, ...]) -> KernelMap:
        """The map of the offsets ``kept`` (indices into ``offsets``, in weight order), built
        once per subset: a conv whose pruned offsets are gone gathers and multiplies only these.
        The result is not flagged submanifold (its identity offset is no longer at ``K // 2``)."""
        check_kept_offsets(kept, self.kernel_volume)
        if list(kept) == list(range(self.kernel_volume)):
            return self

        def build() -> KernelMap:
            offsets = [self.offsets[k] for k in kept]
            if self._nbmap is not None:  # columns of the table; CSR, if asked for, from it
                nb = self._nbmap[:, list(kept)].contiguous()
                return KernelMap.from_nbmap(nb, self.out_coords, self.n_in, offsets)
            ptr = self.offset_ptr
            spans = [(int(ptr[k]), int(ptr[k + 1])) for k in kept]
            index = torch.cat([torch.arange(lo, hi) for lo, hi in spans]).to(self._in_idx.device)
            sizes = torch.tensor([0] + [hi - lo for lo, hi in spans], dtype=ptr.dtype)
            return KernelMap(self._in_idx[index], self._out_idx[index], torch.cumsum(sizes, 0),
                             self.out_coords, self.n_in, offsets)  # fmt: skip

        return self.plan(PlanKind.OFFSET_SUBSET, build, tuple(kept))

    def transposed_view(self) -> KernelMap:
        """The transposed map for the input gradient, built once (``plans``); no coordinates.

        The backward pass of every layer sharing this map reuses it; only its pairs, sizes and
        ``nbmap`` are read, so its ``out_coords`` is an empty placeholder of the right length.
        """

        def build() -> KernelMap:
            placeholder = torch.empty((self.n_in, 4), dtype=torch.int32, device=self.device)
            return self.transposed(placeholder)

        return self.plan(PlanKind.TRANSPOSED, build)


def check_kept_offsets(kept: tuple[int, ...], volume: int) -> None:
    """ValueError unless ``kept`` are distinct offset indices below ``volume``."""
    if any(not 0 <= k < volume for k in kept) or len(set(kept)) != len(kept):
        raise ValueError(f"kept offsets {list(kept)} must be distinct indices below {volume}")


def from_neighbor_matrix(
    found: torch.Tensor,
    out_coords: torch.Tensor,
    n_in: int,
    offsets: list[tuple[int, int, int]],
) -> KernelMap:
    """CSR map from an int32 ``[K, N_out]`` neighbour matrix (row-major nonzero = CSR order)."""
    k_idx, out_idx = (found >= 0).nonzero(as_tuple=True)
    in_idx = found[k_idx, out_idx].long()
    counts = torch.bincount(k_idx, minlength=len(offsets)).cpu()
    return KernelMap(in_idx, out_idx, _ptr(counts), out_coords, n_in, offsets)


def submanifold_from_half(
    half: torch.Tensor, coords: torch.Tensor, offsets: list[tuple[int, int, int]]
) -> KernelMap:
    """Full submanifold map from the first ``K // 2`` offsets of a symmetric kernel.

    Offset ``K-1-k`` is the negation of offset ``k``; the centre ``K // 2`` is the identity.
    """
    n = coords.shape[0]
    n_kernel = len(offsets)
    n_half = n_kernel // 2
    k_idx, out_a = (half >= 0).nonzero(as_tuple=True)
    in_a = half[k_idx, out_a].long()
    # Mirror: pairs of offset K-1-k are (in=out_a, out=in_a); sort them by (offset, out).
    k_mirror = (n_kernel - 1) - k_idx
    order = torch.argsort(k_mirror * max(n, 1) + in_a, stable=True)
    centre = torch.arange(n, device=coords.device)
    in_idx = torch.cat([in_a, centre, out_a[order]])
    out_idx = torch.cat([out_a, centre, in_a[order]])
    half_counts = torch.bincount(k_idx, minlength=n_half).cpu()
    counts = torch.cat([half_counts, torch.tensor([n]), half_counts.flip(0)])
    return KernelMap(in_idx, out_idx, _ptr(counts), coords, n, offsets, submanifold=True)


def _ptr(counts: torch.Tensor) -> torch.Tensor:
    ptr = torch.zeros(counts.numel() + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=ptr[1:])
    return ptr
