"""The device-resident (CUDA) map path, run on CPU: equal maps, and its host syncs counted.

The Triton hash table runs under ``TRITON_INTERPRET=1`` (set in conftest); ``device.FORCE``
sends CPU maps through the code CUDA uses. A ``TorchFunctionMode`` counts every call that reads
data back to the host or has a data-dependent shape, made from sparseconv's own code (the
interpreter's own conversions are not the library's).
"""

import os
import sys
from pathlib import Path

import pytest
import torch
from reference import assert_same_map, random_coords
from torch.overrides import TorchFunctionMode

import sparseconv
from sparseconv.maps import MapCache, build_kernel_map, device, tables

LIBRARY = Path(sparseconv.__file__).resolve().parent
ROOT = LIBRARY.parent
SYNCS = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
    torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.nonzero, torch.nonzero,
    torch.unique, torch.Tensor.unique, torch.unique_consecutive, torch.masked_select,
    torch.Tensor.masked_select, torch.Tensor.cpu, torch.Tensor.numpy, torch.bincount,
    torch.Tensor.bincount, torch.repeat_interleave, torch.Tensor.repeat_interleave,
}  # fmt: skip


class SyncCounter(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        caller = Path(sys._getframe(1).f_code.co_filename).resolve()
        ours = caller.is_relative_to(ROOT / "sparseconv") or caller.is_relative_to(ROOT / "kernels")
        if ours and (func in SYNCS or _bool_mask_index(func, args)):
            self.calls.append(f"{getattr(func, '__name__', func)} at {caller.name}")
        return func(*args, **kwargs)


def _bool_mask_index(func, args) -> bool:
    if func is not torch.Tensor.__getitem__ or len(args) < 2:
        return False
    index = args[1] if isinstance(args[1], tuple) else (args[1],)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)


pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
    reason="the Triton hash table needs CUDA or TRITON_INTERPRET=1",
)


@pytest.fixture
def device_path(monkeypatch):
    monkeypatch.setattr(device, "FORCE", True)
    monkeypatch.setattr(tables, "USE_NATIVE", False)


def _reference(coords, monkeypatch, **kw):
    with monkeypatch.context() as patch:
        patch.setattr(device, "FORCE", False)
        patch.setattr(tables, "USE_NATIVE", False)
        return build_kernel_map(coords, **kw)


CASES = [
    (dict(kernel_size=3), 0),
    (dict(kernel_size=5, dilation=2), 0),
    (dict(kernel_size=(3, 1, 2)), 0),
    (dict(kernel_size=2, stride=2), 1),
    (dict(kernel_size=3, stride=2), 1),
    (dict(kernel_size=3, stride=2, downsample_mode="spconv"), 1),
    (dict(kernel_size=2, stride=2, tensor_stride=2, transposed=True), 1),
]


@pytest.mark.parametrize("method", ["hash", "mergesort"])
@pytest.mark.parametrize("case,max_syncs", CASES, ids=lambda c: str(c))
def test_device_maps_equal_the_reference_with_at_most_one_sync(
    case, max_syncs, method, device_path, monkeypatch
):
    stride = case.get("tensor_stride", 1)
    coords = random_coords(120, extent=10, seed=len(str(case)), stride=stride)
    counter = SyncCounter()
    with counter:
        km = build_kernel_map(coords, method=method, check=False, **case)
    assert len(counter.calls) <= max_syncs, counter.calls
    reference = _reference(coords, monkeypatch, method=method, **case)
    assert torch.equal(km.nbmap, reference.nbmap)
    assert_same_map(km, reference)  # the CSR lists, derived on demand (those do sync)


def test_cached_transposed_map_needs_no_sync(device_path):
    coords = random_coords(150, extent=10, seed=4)
    cache = MapCache()
    cache.coords[(1, 1, 1)] = coords
    down = build_kernel_map(coords, 2, 2, cache=cache, check=False)
    counter = SyncCounter()
    with counter:
        up = build_kernel_map(down.out_coords, 2, 2, tensor_stride=2, transposed=True,
                              cache=cache, check=False)  # fmt: skip
        tables_read = (up.nbmap, down.transposed_view().nbmap)
    assert counter.calls == []
    assert tables_read[0].shape == (len(coords), 8)
    assert up.out_coords is coords


def test_a_network_forward_builds_its_maps_with_one_sync_per_strided_map(device_path):
    import sparseconv as sc

    coords = random_coords(200, extent=10, seed=6)
    x = sc.SparseTensor(torch.randn(len(coords), 4), coords)
    net = sc.nn.Sequential(
        sc.nn.Conv3d(4, 8, 3), sc.nn.Conv3d(8, 8, 2, stride=2), sc.nn.Conv3d(8, 8, 3),
        sc.nn.Conv3d(8, 4, 2, stride=2, transposed=True),
    )  # fmt: skip
    counter = SyncCounter()
    with counter:
        built = _maps_built(x, net)
    assert len(built) == 4  # subm, strided, subm at stride 2, transposed (cached: no search)
    assert len(counter.calls) <= 1, counter.calls


def test_the_counter_sees_the_syncs_of_the_reference_path(monkeypatch):
    """The torch reference mapper reads sizes back after every step: the counter must see it."""
    monkeypatch.setattr(tables, "USE_NATIVE", False)
    coords = random_coords(120, extent=10, seed=2)
    counter = SyncCounter()
    with counter:
        pairs = build_kernel_map(coords, 2, stride=2, check=False).in_idx
    assert pairs.numel() == len(coords)
    assert len(counter.calls) >= 3, counter.calls


def _maps_built(x, net):
    y, built = x, {}
    for layer in net:
        km = layer.kernel_map(y)
        built[str(layer)] = km
        y = sc_tensor(km, layer, y)
    return built


def sc_tensor(km, layer, x):
    import sparseconv as sc

    feats = torch.zeros((km.n_out, layer.out_channels))
    s = layer.stride
    stride = (
        tuple(a // b for a, b in zip(x.stride, s))
        if layer.transposed
        else tuple(a * b for a, b in zip(x.stride, s))
    )
    return sc.SparseTensor(feats, km.out_coords, stride, cache=x.cache, check=False)
