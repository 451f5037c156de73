"""The fused CPU conv kernels (``cpu/implicit_gemm.c``): shape checks and ctypes calls.

Plain torch cannot fuse gather, GEMM and scatter-add on CPU, and those three memory passes cost
more than the GEMM for 64-channel layers. The C kernels do the output-stationary implicit GEMM
(each thread owns a tile of output rows and multiplies the listed input rows straight into
them) and the per-offset weight gradient. Building and loading: :mod:`cpu_library`.
Reference: ``sparseconv.functional.dataflow_torch`` (tests compare the two).
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sparseconv.kernels import cpu_library
from sparseconv.utils.stamps import stamp
from sparseconv.utils.threads import available_threads

PANEL = 16  # the register kernel's column block: weights are padded to a multiple of it
# pairs per weight-gradient work item: their gathered rows (2 x 128 x C floats) stay in L2
WEIGHT_GRAD_CHUNK = 128

# Output rows per tile: TILE_FLOATS accumulators (1 MiB, about one core's L2), at most TILE_MAX
# rows. A tile reads every offset's weight once, and a scan row has ~3 of its 27 neighbours, so
# a tile needs hundreds of rows before each offset's weight serves more than a few of them: at
# C = 256 a 64-row tile streamed 27 x 256 KB of weights per 64 rows and ran at half the rate.
TILE_FLOATS = 1 << 18
TILE_MAX = 1024
MIN_TILE = 32  # two 16-row AMX tiles; below this the per-tile bucketing dominates
# tiles handed to each thread at least: the dynamic schedule then evens out uneven tiles
TILES_PER_THREAD = 4
available = cpu_library.available
unavailable_reason = cpu_library.unavailable_reason


def _check(rc: int, what: str) -> None:
    if rc & 8:
        raise RuntimeError(f"{what}: this CPU or build has no usable AMX-BF16")
    if rc & 4:
        raise ValueError(f"{what}: the kernel was given a panel width it was not built for")
    if rc & 2:
        raise MemoryError(f"{what}: out of memory for the per-thread buffers")
    if rc & 1:
        raise IndexError(f"{what}: the kernel map names a row outside the feature matrix")


def _panel_width(cout: int, panel: int = PANEL) -> int:
    """``cout`` rounded up to whole register panels (the row stride of padded weights)."""
    return -(-cout // panel) * panel


def _panel(cout: int) -> int:
    """The register kernel's panel for ``cout`` columns: the wide one (32 on AVX-512: two
    vectors per broadcast input value, so half the loads per FMA) wherever it pads Cout to no
    more columns than the 16-wide one (Cout = 24 pads to 32 either way), else 16. The 16-wide
    kernel is load-bound (one broadcast load per FMA): a 24-channel layer ran at half the FMA
    rate with it."""
    wide = cpu_library.lib().sc_max_panel()
    return wide if _panel_width(cout, wide) == _panel_width(cout, PANEL) else PANEL


def _panel_major_weight(weight: torch.Tensor, panel: int) -> torch.Tensor:
    """``[K, Cin, Cout]`` as ``[K, Cout_p / panel, Cin, panel]`` (Cout zero-padded to whole
    panels): the register kernel reads one panel down all Cin rows, so each panel is made one
    contiguous block (sequential reads the prefetcher follows, instead of a short read every
    ``Cout`` floats)."""
    k, cin, cout = weight.shape
    ldw = _panel_width(cout, panel)
    padded = weight.new_zeros((k, cin, ldw))
    padded[:, :, :cout] = weight
    return padded.view(k, cin, ldw // panel, panel).transpose(1, 2).contiguous()


def _kept_layout(weight: torch.Tensor, pack: Callable[..., torch.Tensor], *params: object):
    """``pack(weight, *params)``, kept while ``weight`` lives and is unchanged.

    Inference calls every conv with the same weights, and repacking a 256-channel weight (7 MB)
    on every call was 6 % of a bf16 MinkUNet call. The packed copy is reused while the weight's
    storage, shape, strides and version counter (bumped by every in-place write) are the same.
    It is held beside the weight (:data:`_LAYOUTS`, dropped with it), not on it, so pickling
    or copying a model does not carry it. Weights that autograd is tracking (training: they
    change every step) and views are packed per call; so is anything under torch.compile or a
    tensor subclass."""
    if (
        type(weight) not in (torch.Tensor, torch.nn.Parameter)
        or weight._base is not None
        or (weight.requires_grad and torch.is_grad_enabled())
        or torch.compiler.is_compiling()
    ):
        return pack(weight, *params)
    state = stamp(weight)
    kept = _layouts_of(weight)
    key = (pack.__name__, *params)
    hit = kept.get(key)
    if hit is not None and hit[0] == state:
        return hit[1]
    packed = pack(weight, *params)
    kept[key] = (state, packed)
    return packed


# id(weight) -> (a weak reference to it, {(layout, *params): (state, packed)}); an entry leaves
# when its weight is freed
_LAYOUTS: dict[int, tuple[weakref.ref, dict]] = {}


def _layouts_of(weight: torch.Tensor) -> dict:
    entry = _LAYOUTS.get(id(weight))
    if entry is None or entry[0]() is not weight:
        ref = weakref.ref(weight, functools.partial(_forget, id(weight)))
        entry = _LAYOUTS[id(weight)] = (ref, {})
    return entry[1]


def _forget(key: int, ref: weakref.ref) -> None:
    entry = _LAYOUTS.get(key)
    if entry is not None and entry[0] is ref:
        del _LAYOUTS[key]


def _check_inputs(dtypes: tuple[torch.dtype, ...] = (torch.float32,), **tensors) -> None:
    """Each tensor a CPU tensor of one of ``dtypes`` (the kernels read raw memory)."""
    for name, t in tensors.items():
        if t.device.type != "cpu" or t.dtype not in dtypes:
            names = " or ".join(str(d).removeprefix("torch.") for d in dtypes)
            raise TypeError(f"{name} must be a {names} CPU tensor, got {t.dtype} on {t.device}")


@dataclass(frozen=True)
class TilePlan:
    """Every tile's neighbour lists of one neighbour table, for one tile size.

    The kernels list each tile's neighbours offset by offset before multiplying; at 8-16
    channels that listing costs a quarter of the layer. A map serves every layer of a stage
    (and a transposed map their input gradients), so the lists are made once per map and tile
    size (``sc_tile_plan_fill``) and every later call reads them. Entries ``ptr[t * K + k] ..
    ptr[t * K + k + 1]`` of ``src`` / ``row`` are tile ``t``'s offset-``k`` neighbours: the
    input row and the row within the tile. Checked against ``n_src`` input rows when made; a
    kernel call takes it only for a table of the same ``n_dst`` rows and ``K`` offsets (its
    tile rows must exist).
    """

    tile: int
    n_src: int
    n_dst: int
    ptr: torch.Tensor  # int64 [n_tiles * K + 1]
    src: torch.Tensor  # int32 [pairs]
    row: torch.Tensor  # int32 [pairs]

    def pointers(self) -> tuple[int, int, int]:
        return self.ptr.data_ptr(), self.src.data_ptr(), self.row.data_ptr()


# (tile, n_src) -> the map's kept TilePlan for that tile size, or None to list tiles as they run
TilePlanner = Callable[[int, int], "TilePlan | None"]


def tile_plan(nbmap: torch.Tensor, tile: int, n_src: int) -> TilePlan:
    """The :class:`TilePlan` of ``nbmap`` (int32 ``[N_dst, K]``) for tiles of ``tile`` rows,
    checked against ``n_src`` input rows (IndexError if it names a row outside them)."""
    if tile < 1:
        raise ValueError(f"tile must be at least 1 row, got {tile}")
    nbmap = nbmap.to(torch.int32).contiguous()
    n_dst, k = nbmap.shape
    n_tiles = -(-n_dst // tile)
    threads = available_threads()
    counts = torch.zeros(n_tiles * k + 1, dtype=torch.int64)
    lib = cpu_library.lib()
    _check(lib.sc_tile_plan_count(nbmap.data_ptr(), n_dst, k, n_src, tile,
                                  counts[1:].data_ptr(), threads), "tile_plan")  # fmt: skip
    ptr = counts.cumsum_(0)
    pairs = int(ptr[-1])
    src, row = torch.empty(pairs, dtype=torch.int32), torch.empty(pairs, dtype=torch.int32)
    rc = lib.sc_tile_plan_fill(nbmap.data_ptr(), n_dst, k, n_src, tile, ptr.data_ptr(),
                               src.data_ptr(), row.data_ptr(), threads)  # fmt: skip
    _check(rc, "tile_plan")
    return TilePlan(tile, n_src, n_dst, ptr, src, row)


def _plan_pointers(
    planner: TilePlanner | None, tile: int, n_src: int, n_dst: int, k: int
) -> tuple[int | None, int | None, int | None]:
    """The kernel's plan arguments: the planner's plan for this tile size, or NULLs."""
    if planner is None:
        return None, None, None
    plan = planner(tile, n_src)
    if plan is None:
        return None, None, None
    made_for = (plan.tile, plan.n_src, plan.n_dst, plan.ptr.numel())
    if made_for != (tile, n_src, n_dst, -(-n_dst // tile) * k + 1):
        raise ValueError(
            f"the tile plan (tile {plan.tile}, {plan.n_src} input rows, {plan.n_dst} output rows, "
            f"{plan.ptr.numel()} list bounds) was not made for this call (tile {tile}, {n_src} "
            f"input rows, {n_dst} x {k} neighbour table)"
        )
    return plan.pointers()


def implicit_gemm(
    src: torch.Tensor,
    weight: torch.Tensor,
    nbmap: torch.Tensor,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    relu: bool = False,
    residual: torch.Tensor | None = None,
    planner: TilePlanner | None = None,
) -> torch.Tensor:
    """``dst[j] = sum_k src[nbmap[j, k]] @ weight[k]`` (rows with ``nbmap == -1`` skipped),
    then ``* scale + shift`` per output channel, ``+ residual[j]`` and ``max(., 0)`` with
    ``relu`` (an inference epilogue applied as each tile of rows is stored; any term may be
    None). ``planner`` gives the map's kept :class:`TilePlan` for the tile size this call
    uses (None: each tile's neighbours are listed as it is taken).

    ``src`` float32 ``[N_src, Cin]``, ``weight`` float32 ``[K, Cin, Cout]``, ``nbmap`` int32
    ``[N_dst, K]``. Deterministic: each output row is summed by one thread in offset order.
    """
    _check_inputs(src=src, weight=weight)
    src, nbmap, terms = _prepared(src, weight, nbmap, scale, shift, residual, torch.float32)
    k, cin, cout = weight.shape
    panel = _panel(cout)
    w = _kept_layout(weight, _panel_major_weight, panel)
    n_dst = nbmap.shape[0]
    dst = src.new_empty((n_dst, cout))
    if n_dst == 0 or cout == 0:  # nothing to compute (and no panel to tile)
        return dst
    ldw = _panel_width(cout, panel)
    threads, tile, plan = _schedule(planner, ldw, src.shape[0], n_dst, k)
    rc = cpu_library.lib().sc_implicit_gemm(
        src.data_ptr(), src.shape[0], cin, w.data_ptr(), ldw, cout, nbmap.data_ptr(),
        n_dst, k, dst.data_ptr(), tile, *plan, panel, *_pointers(terms), int(relu), threads,
    )  # fmt: skip
    _check(rc, "implicit_gemm")
    return dst


def _schedule(planner: TilePlanner | None, ldw: int, n_src: int, n_dst: int, k: int):
    """A kernel call's ``(threads, tile rows, plan pointers)``: the same tile rule and plan
    lookup for the fp32 and the AMX kernel."""
    threads = available_threads()
    tile = _tile_rows(ldw, n_dst, threads)
    return threads, tile, _plan_pointers(planner, tile, n_src, n_dst, k)


def _tile_rows(ldw: int, n_dst: int, threads: int) -> int:
    """Output rows per tile: as many as fit TILE_FLOATS accumulators (at most TILE_MAX), but
    at least TILES_PER_THREAD tiles per thread, so a coarse layer of a few thousand rows is not
    one tile run by one thread while the others wait."""
    share = -(-n_dst // (TILES_PER_THREAD * threads))
    return max(MIN_TILE, min(TILE_MAX, TILE_FLOATS // ldw, share))


def _prepared(src, weight, nbmap, scale, shift, residual, dtype: torch.dtype):
    """Checked, contiguous operands and the epilogue's pointers ``(scale, shift, residual)``."""
    src = src.contiguous()
    nbmap = nbmap.to(torch.int32).contiguous()
    k, cin, cout = weight.shape
    if nbmap.shape[1] != k or src.shape[1] != cin:
        raise ValueError(
            f"shapes disagree: src {list(src.shape)}, weight {list(weight.shape)}, "
            f"nbmap {list(nbmap.shape)}"
        )
    terms = [_channel_vector(t, cout, name) for t, name in ((scale, "scale"), (shift, "shift"))]
    if residual is not None:
        if residual.shape != (nbmap.shape[0], cout):
            raise ValueError(f"residual must have shape [{nbmap.shape[0]}, {cout}] (the output's), "
                             f"got {list(residual.shape)}")  # fmt: skip
        residual = residual.to(dtype).contiguous()
    terms.append(residual)
    return src, nbmap, terms


def _pointers(tensors: list[torch.Tensor | None]) -> list[int | None]:
    return [t.data_ptr() if t is not None else None for t in tensors]


# AMX tile geometry (implicit_gemm_amx.c): bf16 input channels per tile row, fp32 columns
AMX_CHUNK = 32
AMX_PANEL = 16


@functools.cache
def amx_available() -> bool:
    """Whether the bf16 kernel can run here: the library was built for a CPU with AMX-BF16, the
    OS let this process use the tile registers, and ``$SPARSECONV_AMX`` is not ``0`` (which
    makes bf16 convolutions widen to float32 as on other CPUs)."""
    if os.environ.get("SPARSECONV_AMX", "1") == "0":
        return False
    return available() and bool(cpu_library.lib().sc_amx_ready())


def _vnni_weight(weight: torch.Tensor) -> torch.Tensor:
    """``[K, Cin, Cout]`` bf16 as the AMX kernel's blocks ``[K, panels, chunks, 16, 16, 2]``:
    Cin zero-padded to whole 32-channel chunks, Cout to whole 16-column panels, and each
    chunk's channels paired (row ``i`` of a block holds channels ``2i`` and ``2i + 1`` of every
    column), the layout TDPBF16PS multiplies."""
    k, cin, cout = weight.shape
    cin_p, ldw = _panel_width(cin, AMX_CHUNK), _panel_width(cout, AMX_PANEL)
    padded = weight.new_zeros((k, cin_p, ldw))
    padded[:, :cin, :cout] = weight
    blocks = padded.view(k, cin_p // AMX_CHUNK, AMX_CHUNK // 2, 2, ldw // AMX_PANEL, AMX_PANEL)
    return blocks.permute(0, 4, 1, 2, 5, 3).contiguous()


def implicit_gemm_bf16(
    src: torch.Tensor,
    weight: torch.Tensor,
    nbmap: torch.Tensor,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    relu: bool = False,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    planner: TilePlanner | None = None,
) -> torch.Tensor:
    """:func:`implicit_gemm` for bfloat16 ``src`` and ``weight`` on AMX: products summed in
    float32, the epilogue in float32, each output rounded to bfloat16 once (the semantics of
    widening to float32 and rounding the result, up to the order of the float32 sums).
    ``out_dtype=torch.float32`` keeps the float32 results unrounded (``residual`` float32 then);
    a float32 ``src`` is rounded to bf16 row by row as it is gathered (no converted copy): float32
    operands multiplied on the tile unit, what torch's float32 matmul precision ``"medium"`` does
    on this CPU."""
    _check_inputs((torch.bfloat16,), weight=weight)
    _check_inputs((torch.bfloat16, torch.float32), src=src)
    if out_dtype not in (torch.bfloat16, torch.float32):
        raise ValueError(f"out_dtype must be bfloat16 or float32, got {out_dtype}")
    src, nbmap, terms = _prepared(src, weight, nbmap, scale, shift, residual, out_dtype)
    k, cin, cout = weight.shape
    n_dst = nbmap.shape[0]
    dst = src.new_empty((n_dst, cout), dtype=out_dtype)
    if n_dst == 0 or cout == 0:  # nothing to compute (and no panel to tile)
        return dst
    w = _kept_layout(weight, _vnni_weight)
    cin_p, ldw = _panel_width(cin, AMX_CHUNK), _panel_width(cout, AMX_PANEL)
    threads, tile, plan = _schedule(planner, ldw, src.shape[0], n_dst, k)
    rc = cpu_library.lib().sc_implicit_gemm_bf16(
        src.data_ptr(), src.shape[0], cin, w.data_ptr(), cin_p, ldw, cout, nbmap.data_ptr(),
        n_dst, k, dst.data_ptr(), tile, *plan, *_pointers(terms), int(relu),
        int(src.dtype == torch.float32), int(out_dtype == torch.float32), threads,
    )  # fmt: skip
    _check(rc, "implicit_gemm_bf16")
    return dst


def _channel_vector(t: torch.Tensor | None, cout: int, name: str) -> torch.Tensor | None:
    """``t`` as a contiguous float32 ``[cout]`` CPU vector (or None)."""
    if t is None:
        return None
    if t.shape != (cout,):
        raise ValueError(f"{name} must have shape [{cout}] (one value per output channel), got "
                         f"{list(t.shape)}")  # fmt: skip
    return t.detach().to(device="cpu", dtype=torch.float32).contiguous()


# pairs per bf16 weight-gradient work item (a multiple of the 32-pair tile depth): x^T and dy of
# 256 pairs at C = 256 are 128 KB each, in L2, and each accumulator tile is loaded and stored
# once per 8 tile multiplies
AMX_WEIGHT_GRAD_CHUNK = 256


def weight_grad_bf16(
    x: torch.Tensor,
    dy: torch.Tensor,
    in_idx: torch.Tensor,
    out_idx: torch.Tensor,
    offset_ptr: torch.Tensor,
) -> torch.Tensor:
    """:func:`weight_grad` for bfloat16 ``x`` and ``dy`` on AMX: float32 ``[K, Cin, Cout]``,
    every product exact and every sum float32 (the widened computation in another order)."""
    _check_inputs((torch.bfloat16,), x=x, dy=dy)
    x, dy, in_idx, out_idx, ptr = _pair_operands(x, dy, in_idx, out_idx, offset_ptr)
    k = ptr.numel() - 1
    dw = torch.empty((k, x.shape[1], dy.shape[1]))
    if dw.numel() == 0:
        return dw
    rc = cpu_library.lib().sc_weight_grad_bf16(
        x.data_ptr(), x.shape[0], x.shape[1], dy.data_ptr(), dy.shape[0], dy.shape[1],
        in_idx.data_ptr(), out_idx.data_ptr(), ptr.data_ptr(), k, dw.data_ptr(),
        AMX_WEIGHT_GRAD_CHUNK, available_threads(),
    )  # fmt: skip
    _check(rc, "weight_grad_bf16")
    return dw


def _pair_operands(x, dy, in_idx, out_idx, offset_ptr):
    return (x.contiguous(), dy.contiguous(), in_idx.to(torch.int64).contiguous(),
            out_idx.to(torch.int64).contiguous(), offset_ptr.to(torch.int64).contiguous())  # fmt: skip


def weight_grad(
    x: torch.Tensor,
    dy: torch.Tensor,
    in_idx: torch.Tensor,
    out_idx: torch.Tensor,
    offset_ptr: torch.Tensor,
) -> torch.Tensor:
    """``dW[k] = sum_p x[in_idx[p]]^T dy[out_idx[p]]`` over the pairs of offset ``k``.

    Pairs are CSR by offset (``offset_ptr`` ``[K + 1]``); the result is ``[K, Cin, Cout]``.
    """
    _check_inputs(x=x, dy=dy)
    x, dy, in_idx, out_idx, ptr = _pair_operands(x, dy, in_idx, out_idx, offset_ptr)
    k = ptr.numel() - 1
    cin, cout = x.shape[1], dy.shape[1]
    dw = x.new_empty((k, cin, cout))
    if dw.numel() == 0:
        return dw
    ldw = _panel_width(cout)
    rc = cpu_library.lib().sc_weight_grad(
        x.data_ptr(), x.shape[0], cin, dy.data_ptr(), dy.shape[0], cout, ldw, in_idx.data_ptr(),
        out_idx.data_ptr(), ptr.data_ptr(), k, dw.data_ptr(), WEIGHT_GRAD_CHUNK,
        available_threads(),
    )  # fmt: skip
    _check(rc, "weight_grad")
    return dw
