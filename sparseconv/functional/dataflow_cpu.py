"""The ``cpu_implicit_gemm`` dataflow: adapters from a ``KernelMap`` to the fused C kernels.

Output-stationary like ``triton_implicit_gemm``, but for the CPU: the forward pass walks
``kmap.nbmap``, the input gradient the transposed map's ``nbmap`` with ``W^T``, and the weight
gradient the CSR pairs (``sparseconv.kernels.cpu_implicit_gemm``); each map keeps the kernels'
per-tile neighbour lists once made (:func:`_tile_planner`). No atomics: the forward
pass, the input gradient and the weight gradient are deterministic and do not depend on the
thread count (the weight gradient sums fixed slots of pairs in slot order). The kernels
compute in float32; float16 / bfloat16 operands are widened to float32 per call (exact: the
products of half-precision numbers are exact in float32, and the sum accumulates in float32 as
every dataflow's does), which on a CPU without half-precision GEMM instructions is more than
ten times faster than torch's half-precision ``bmm``. The caller
rounds the result back to the operands' dtype. float64 uses the ``torch`` dataflow.

Where the CPU has AMX-BF16 (``kernels.amx_available()``), bfloat16 operands skip the widening:
the forward pass, the input gradient and the weight gradient run the AMX kernels, which
multiply bf16 tiles into float32 sums (the same semantics; about four times the fp32 kernel's
rate at 64-256 channels). Float32 operands take them too when torch's float32 matmul precision
allows bf16 (:func:`float32_matmul_in_bf16`): rounded to bf16, float32 results.
"""

from __future__ import annotations

from collections import Counter

import torch

from sparseconv.functional.epilogue import Epilogue
from sparseconv.kernels import cpu_implicit_gemm as kernels
from sparseconv.maps.kernel_map import KernelMap, PlanKind

COMPUTED_IN_FLOAT32 = (torch.float32, torch.float16, torch.bfloat16)


def unsupported(x: torch.Tensor) -> str:
    """Why this dataflow cannot run on ``x`` ('' when it can)."""
    if x.device.type != "cpu":
        return f"it runs on CPU tensors only, got {x.device}"
    if x.dtype not in COMPUTED_IN_FLOAT32:
        return (
            f"it runs float32 (and widens float16/bfloat16), got {x.dtype} (use dataflow='torch')"
        )
    if not kernels.available():
        return f"its C kernels could not be built: {kernels.unavailable_reason()}"
    return ""


def forward(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    return fused_forward(x, weight, kmap, None)


def fused_forward(
    x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, epilogue: Epilogue | None
) -> torch.Tensor:
    """The forward pass with an inference epilogue applied as the kernel stores each tile.

    A 1x1x1 submanifold conv (a residual shortcut) is a plain matrix product over an identity
    map: torch's GEMM runs it about twice as fast as the neighbour-table kernel."""
    out_dtype = _amx_output(x, weight)
    if out_dtype is not None:
        return _amx_forward(x, weight, kmap, epilogue, out_dtype)
    x, weight = x.float(), weight.float()
    if kmap.kernel_volume == 1 and kmap.submanifold:
        out = x @ weight[0]
        return out if epilogue is None else epilogue.apply_(out)
    epilogue = epilogue or Epilogue()
    residual = None if epilogue.residual is None else epilogue.residual.float()
    return kernels.implicit_gemm(
        x, weight, kmap.nbmap, epilogue.scale, epilogue.shift, epilogue.relu, residual,
        planner=_tile_planner(kmap),
    )  # fmt: skip


def _tile_planner(kmap: KernelMap) -> kernels.TilePlanner:
    """The kernels' tile lists of ``kmap.nbmap``, kept in ``kmap.plans`` per tile size.

    Making them costs about 1.3 listings of the tiles, and a call that reads them saves about
    half of an 8-16-channel layer. A submanifold map (a stage's, or the searched map of a
    mirror-symmetric offset subset) serves the convs that share it, so it gets them on first
    use; any other map (strided, transposed, a subset cut from a full map) usually serves one
    call, so it gets them when a second call on the same tile size comes."""

    def planner(tile: int, n_src: int) -> kernels.TilePlan | None:
        uses = kmap.plan(PlanKind.CPU_TILE_USES, Counter)
        uses[tile, n_src] += 1
        if not kmap.submanifold and uses[tile, n_src] == 1:
            return None

        def make() -> kernels.TilePlan:
            return kernels.tile_plan(kmap.nbmap, tile, n_src)

        return kmap.plan(PlanKind.CPU_TILE_LISTS, make, tile, n_src)

    return planner


def float32_matmul_in_bf16() -> bool:
    """Whether torch lets float32 matrix products run in bfloat16 on the CPU
    (``torch.set_float32_matmul_precision("medium")``, i.e.
    ``torch.backends.mkldnn.matmul.fp32_precision == "bf16"``): float32 convs then follow it, as
    the Triton kernels follow ``allow_tf32`` on a GPU."""
    matmul = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    return getattr(matmul, "fp32_precision", None) == "bf16"


def _amx_output(a: torch.Tensor, b: torch.Tensor) -> torch.dtype | None:
    """The output dtype of the AMX kernels for operands ``a``, ``b`` (None: not on AMX): bf16
    operands always, float32 ones when torch's float32 matmul precision allows bf16."""
    if a.dtype != b.dtype or a.dtype not in (torch.bfloat16, torch.float32):
        return None
    if a.dtype == torch.float32 and not float32_matmul_in_bf16():
        return None
    return a.dtype if kernels.amx_available() else None


def _amx_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    kmap: KernelMap,
    epilogue: Epilogue | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    epilogue = epilogue or Epilogue()
    return kernels.implicit_gemm_bf16(  # a float32 x is rounded row by row as it is gathered
        x, weight.bfloat16(), kmap.nbmap, epilogue.scale, epilogue.shift, epilogue.relu,
        epilogue.residual, out_dtype, planner=_tile_planner(kmap),
    )  # fmt: skip


def backward_input(dy: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    out_dtype = _amx_output(dy, weight)
    transposed = kmap.transposed_view()
    if out_dtype is not None:
        return _amx_forward(dy, weight.transpose(1, 2), transposed, None, out_dtype)
    wt = weight.float().transpose(1, 2)
    return kernels.implicit_gemm(
        dy.float(), wt, transposed.nbmap, planner=_tile_planner(transposed)
    )


def backward_weight(x: torch.Tensor, dy: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    if _amx_output(x, dy) is not None:
        pairs = (kmap.in_idx, kmap.out_idx, kmap.offset_ptr)
        return kernels.weight_grad_bf16(x.bfloat16(), dy.bfloat16(), *pairs)
    return kernels.weight_grad(x.float(), dy.float(), kmap.in_idx, kmap.out_idx, kmap.offset_ptr)
