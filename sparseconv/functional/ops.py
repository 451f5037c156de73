"""Sparse conv and map building as ``torch.library`` custom ops, for torch.compile and export.

Eagerly, ``conv3d`` passes ``KernelMap`` objects between Python functions; a compiler can trace
none of that (data-dependent sizes, Python caches). Under ``torch.compile`` / ``torch.export``
the same work goes through these ops instead, whose inputs and outputs are plain tensors:

* ``sparseconv::submanifold_map(coords, kernel_size, dilation, tensor_stride) -> nbmap``
* ``sparseconv::strided_map(coords, ..., transposed) -> (out_coords, nbmap)``: the output count is
  data-dependent, so the fake kernel gives it a fresh (unbacked) size.
* ``sparseconv::transpose_map(nbmap, n_in) -> nbmap``: the map of the conv that inverts it.
* ``sparseconv::conv(feats, weight, nbmap, submanifold) -> feats`` with registered autograd
  (``conv_input_grad``, ``conv_weight_grad``).
* ``sparseconv::lookup(keys, queries) -> rows``: the row of every packed query key among
  ``keys`` (-1 where absent), for SPVCNN's point-voxel steps.

``nbmap`` is the int32 ``[N_out, K]`` neighbour table (-1 where absent). The real kernels are the
eager ones: each op wraps its ``nbmap`` in a ``KernelMap`` (kept per tensor, so the layers that
share a map also share its derived plans) and runs the dataflow ``resolve`` picks.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import weakref
from functools import partial

import torch

from sparseconv.functional.dataflows import resolve
from sparseconv.maps import tables
from sparseconv.maps.build import build_kernel_map
from sparseconv.maps.hashtable import HashTable
from sparseconv.maps.kernel_map import KernelMap
from sparseconv.maps.tables import transpose_nbmap


def _capture_dynamic_output_shapes(config) -> None:
    """A strided map's output count depends on the coordinates: without this torch.compile
    would break the graph at every strided map, and the resumed frames would guard on (and
    recompile for) the state of the map cache. With it a network is one graph at any size."""
    config.capture_dynamic_output_shape_ops = True


def _when_imported(name: str, action) -> None:
    """``action(module)`` once ``name`` is imported: now if it is, else right after its import
    (importing torch._dynamo here would add a second to ``import sparseconv``)."""
    if name in sys.modules:
        action(sys.modules[name])
        return

    class _Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname != name:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(fullname)
            if spec is None or spec.loader is None:
                return spec
            execute = spec.loader.exec_module

            def exec_module(module):
                execute(module)
                action(module)

            spec.loader.exec_module = exec_module  # type: ignore[method-assign]
            return spec

    sys.meta_path.insert(0, _Hook())


_when_imported("torch._dynamo.config", _capture_dynamic_output_shapes)

# id(nbmap) -> (weak reference to it, its KernelMap): layers sharing one map share its plans
_KERNEL_MAPS: dict[int, tuple[weakref.ref, KernelMap]] = {}


def _kernel_map(nbmap: torch.Tensor, n_in: int, submanifold: bool) -> KernelMap:
    entry = _KERNEL_MAPS.get(id(nbmap))
    if entry is not None and entry[0]() is nbmap and entry[1].n_in == n_in:
        return entry[1]
    placeholder = torch.empty((nbmap.shape[0], 4), dtype=torch.int32, device=nbmap.device)
    offsets = [(0, 0, k) for k in range(nbmap.shape[1])]  # only their number is read
    kmap = KernelMap.from_nbmap(nbmap, placeholder, n_in, offsets, submanifold=submanifold)
    key = id(nbmap)
    _KERNEL_MAPS[key] = (weakref.ref(nbmap, partial(_forget, key)), kmap)
    return kmap


def _forget(key: int, ref: weakref.ref) -> None:
    """Drop a freed table's entry (not a newer one that reuses its id; not at shutdown)."""
    maps = _KERNEL_MAPS
    if maps is not None and key in maps and maps[key][0] is ref:
        del maps[key]


# -- convolution --------------------------------------------------------------------------------
@torch.library.custom_op("sparseconv::conv", mutates_args=())
def conv(
    feats: torch.Tensor, weight: torch.Tensor, nbmap: torch.Tensor, submanifold: bool
) -> torch.Tensor:
    """``out[j] = sum_k feats[nbmap[j, k]] @ weight[k]``, ``[N_out, Cout]``."""
    kmap = _kernel_map(nbmap, feats.shape[0], submanifold)
    flow = resolve("auto", feats, weight, kmap, False)
    return flow.forward(feats.contiguous(), weight, kmap).to(feats.dtype)


@conv.register_fake
def _(feats, weight, nbmap, submanifold):
    return feats.new_empty((nbmap.shape[0], weight.shape[2]))


@torch.library.custom_op("sparseconv::conv_input_grad", mutates_args=())
def conv_input_grad(grad_out: torch.Tensor, feats: torch.Tensor, weight: torch.Tensor,
                    nbmap: torch.Tensor, submanifold: bool) -> torch.Tensor:  # fmt: skip
    """``dX`` of :func:`conv` (``feats`` picks the dataflow, as in the forward pass)."""
    kmap = _kernel_map(nbmap, feats.shape[0], submanifold)
    flow = resolve("auto", feats, weight, kmap, False)
    return flow.backward_input(grad_out.contiguous(), weight, kmap).to(feats.dtype)


@conv_input_grad.register_fake
def _(grad_out, feats, weight, nbmap, submanifold):
    return feats.new_empty(feats.shape)


@torch.library.custom_op("sparseconv::conv_weight_grad", mutates_args=())
def conv_weight_grad(feats: torch.Tensor, grad_out: torch.Tensor, weight: torch.Tensor,
                     nbmap: torch.Tensor, submanifold: bool) -> torch.Tensor:  # fmt: skip
    """``dW[k] = sum_j feats[nbmap[j, k]]^T grad_out[j]`` (``weight`` picks the dataflow)."""
    kmap = _kernel_map(nbmap, feats.shape[0], submanifold)
    flow = resolve("auto", feats, weight, kmap, False)
    return flow.backward_weight(feats.contiguous(), grad_out.contiguous(), kmap).to(weight.dtype)


@conv_weight_grad.register_fake
def _(feats, grad_out, weight, nbmap, submanifold):
    return weight.new_empty(weight.shape)


def _setup_context(ctx, inputs, output) -> None:
    feats, weight, nbmap, submanifold = inputs
    ctx.save_for_backward(feats, weight, nbmap)
    ctx.submanifold = submanifold


def _backward(ctx, grad_out):
    feats, weight, nbmap = ctx.saved_tensors
    grad_feats = grad_weight = None
    if ctx.needs_input_grad[0]:
        grad_feats = conv_input_grad(grad_out, feats, weight, nbmap, ctx.submanifold)
    if ctx.needs_input_grad[1]:
        grad_weight = conv_weight_grad(feats, grad_out, weight, nbmap, ctx.submanifold)
    return grad_feats, grad_weight, None, None


conv.register_autograd(_backward, setup_context=_setup_context)


# -- maps ---------------------------------------------------------------------------------------
@torch.library.custom_op("sparseconv::submanifold_map", mutates_args=())
def submanifold_map(coords: torch.Tensor, kernel_size: list[int], dilation: list[int],
                    tensor_stride: list[int]) -> torch.Tensor:  # fmt: skip
    kmap = build_kernel_map(coords, tuple(kernel_size), 1, tuple(dilation),
                            tensor_stride=tuple(tensor_stride), check=False)  # fmt: skip
    return kmap.nbmap.clone()


@submanifold_map.register_fake
def _(coords, kernel_size, dilation, tensor_stride):
    volume = kernel_size[0] * kernel_size[1] * kernel_size[2]
    return coords.new_empty((coords.shape[0], volume))


@torch.library.custom_op("sparseconv::strided_map", mutates_args=())
def strided_map(coords: torch.Tensor, kernel_size: list[int], stride: list[int],
                dilation: list[int], tensor_stride: list[int], padding: list[int], mode: str,
                bounds: list[int], transposed: bool, submanifold: bool,
                ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Outputs and table of a strided, transposed (generating) or stride-1 regular conv;
    ``bounds`` empty for an unbounded grid."""
    kmap = build_kernel_map(
        coords, tuple(kernel_size), tuple(stride), tuple(dilation), downsample_mode=mode,
        tensor_stride=tuple(tensor_stride), transposed=transposed, check=False,
        padding=tuple(padding), output_bounds=tuple(bounds) if bounds else None,
        submanifold=submanifold,
    )  # fmt: skip
    return kmap.out_coords.clone(), kmap.nbmap.clone()


@strided_map.register_fake
def _(coords, kernel_size, stride, dilation, tensor_stride, padding, mode, bounds, transposed,
      submanifold):  # fmt: skip
    # every non-empty input falls into some Minkowski cell; the other rules may produce none
    at_least = 1 if mode == "minkowski" and not bounds and not transposed else 0
    n_out = torch.library.get_ctx().new_dynamic_size(min=at_least)
    volume = kernel_size[0] * kernel_size[1] * kernel_size[2]
    return coords.new_empty((n_out, 4)), coords.new_empty((n_out, volume))


@torch.library.custom_op("sparseconv::transpose_map", mutates_args=())
def transpose_map(nbmap: torch.Tensor, n_in: int) -> torch.Tensor:
    return transpose_nbmap(nbmap, n_in)


@transpose_map.register_fake
def _(nbmap, n_in):
    return nbmap.new_empty((n_in, nbmap.shape[1]))


@torch.library.custom_op("sparseconv::lookup", mutates_args=())
def lookup(keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """int32 row of every query key among ``keys`` (-1 where absent)."""
    if tables.native(keys.device):
        return tables.Lookup(keys)(queries).clone()
    return HashTable.build(keys).query(queries).int()


@lookup.register_fake
def _(keys, queries):
    return queries.new_empty(queries.shape, dtype=torch.int32)
