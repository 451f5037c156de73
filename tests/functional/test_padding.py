"""spconv's grid geometry (padding, spatial_shape bounds, stride-1 regular convs) against torch's
dense ``conv3d`` / ``conv_transpose3d``: the output set, values and both gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

import sparseconv as sc
from sparseconv.functional import conv3d
from sparseconv.maps.offsets import output_shape

SHAPE = (7, 6, 5)
CASES = [
    (k, s, p, d)
    for k in (2, 3, 4, 5)
    for s in (1, 2, 3)
    for p in (0, 1, 2)
    for d in (1, 2)
    if min((n + 2 * p - d * (k - 1) - 1) // s + 1 for n in SHAPE) >= 1 and not (d == 2 and k > 3)
]


def _grid_coords(shape, n_per_batch: int, seed: int, stride: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(2):
        cells = torch.randperm(math.prod(shape), generator=g)[:n_per_batch]
        xyz = torch.stack(torch.unravel_index(cells, shape), 1)
        rows.append(torch.cat([torch.full((len(cells), 1), b), xyz * stride], 1))
    return torch.cat(rows).int()


def _dense(feats, coords, shape, stride=1):
    grid = feats.new_zeros(2, feats.shape[1], *shape)
    idx = coords[:, 1:].long() // stride
    grid[coords[:, 0].long(), :, idx[:, 0], idx[:, 1], idx[:, 2]] = feats
    return grid


def _sample(dense, coords, stride):
    idx = coords[:, 1:].long() // stride
    return dense[coords[:, 0].long(), :, idx[:, 0], idx[:, 1], idx[:, 2]]


def _occupied(occupancy: torch.Tensor, stride: int) -> torch.Tensor:
    """Sorted (batch, x, y, z) of the nonzero cells of ``[B, 1, ...]``, scaled by ``stride``."""
    b, _, x, y, z = torch.nonzero(occupancy > 0.5, as_tuple=True)
    coords = torch.stack([b, x * stride, y * stride, z * stride], 1).int()
    return coords


def _sorted(coords):
    from sparseconv.maps import keys

    return keys.unpack(torch.sort(keys.pack(coords)).values)


@pytest.mark.parametrize("dataflow", ["torch", "auto"])
@pytest.mark.parametrize(("k", "s", "p", "d"), CASES)
def test_strided_padding_matches_dense(k, s, p, d, dataflow):
    torch.manual_seed(k * 100 + s * 10 + p + d)
    coords = _grid_coords(SHAPE, 40, seed=k + s + p)
    feats = torch.randn(len(coords), 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(k**3, 3, 4, dtype=torch.float64, requires_grad=True)
    x = sc.SparseTensor(feats, coords)
    y = conv3d(x, weight, kernel_size=k, stride=s, dilation=d, padding=p, spatial_shape=SHAPE,
               downsample_mode="spconv", submanifold=False, dataflow=dataflow)  # fmt: skip
    dense_w = weight.reshape(k, k, k, 3, 4).permute(4, 3, 0, 1, 2)
    dense_x = _dense(feats, coords, SHAPE)
    ref = F.conv3d(dense_x, dense_w, stride=s, padding=p, dilation=d)
    assert tuple(ref.shape[2:]) == output_shape(SHAPE, (k,) * 3, (s,) * 3, (p,) * 3, (d,) * 3)
    occupancy = F.conv3d(
        _dense(torch.ones(len(coords), 1, dtype=torch.float64), coords, SHAPE),
        torch.ones(1, 1, k, k, k, dtype=torch.float64), stride=s, padding=p, dilation=d,
    )  # fmt: skip
    expected = _occupied(occupancy, s)
    assert torch.equal(_sorted(y.coords), _sorted(expected))
    assert y.stride == (s, s, s)
    torch.testing.assert_close(y.feats, _sample(ref, y.coords, s), rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(y.feats)
    gx, gw = torch.autograd.grad((y.feats * grad).sum(), [feats, weight])
    dense_grad = ref.new_zeros(ref.shape)
    idx = y.coords[:, 1:].long() // s
    dense_grad[y.coords[:, 0].long(), :, idx[:, 0], idx[:, 1], idx[:, 2]] = grad
    rx, rw = torch.autograd.grad((ref * dense_grad).sum(), [feats, weight])
    torch.testing.assert_close(gx, rx, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gw, rw, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("k", "s", "p"), [(k, s, p) for k in (2, 3, 4) for s in (2, 3)
                                           for p in (0, 1, 2) if p < k])  # fmt: skip
def test_transposed_padding_matches_dense(k, s, p):
    coarse = (4, 3, 3)
    torch.manual_seed(k + s + p)
    coords = _grid_coords(coarse, 12, seed=k * s + p, stride=s)
    feats = torch.randn(len(coords), 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(k**3, 3, 2, dtype=torch.float64, requires_grad=True)
    x = sc.SparseTensor(feats, coords, stride=s)
    out_pad = 1 if s > p else 0  # torch requires output_padding < max(stride, dilation)
    y = conv3d(x, weight, kernel_size=k, stride=s, padding=p, spatial_shape=coarse,
               output_padding=out_pad, transposed=True, downsample_mode="spconv")  # fmt: skip
    dense_w = weight.reshape(k, k, k, 3, 2).permute(3, 4, 0, 1, 2)
    ref = F.conv_transpose3d(_dense(feats, coords, coarse, s), dense_w, stride=s, padding=p,
                             output_padding=out_pad)  # fmt: skip
    occupancy = F.conv_transpose3d(
        _dense(torch.ones(len(coords), 1, dtype=torch.float64), coords, coarse, s),
        torch.ones(1, 1, k, k, k, dtype=torch.float64), stride=s, padding=p,
        output_padding=out_pad,
    )  # fmt: skip
    assert torch.equal(_sorted(y.coords), _sorted(_occupied(occupancy, 1)))
    torch.testing.assert_close(y.feats, _sample(ref, y.coords, 1), rtol=1e-10, atol=1e-10)
    gx = torch.autograd.grad(y.feats.sum(), feats)[0]
    dense_grad = torch.zeros_like(ref)
    idx = y.coords.long()
    dense_grad[idx[:, 0], :, idx[:, 1], idx[:, 2], idx[:, 3]] = 1.0
    torch.testing.assert_close(gx, torch.autograd.grad((ref * dense_grad).sum(), feats)[0])


def test_inverse_of_padded_conv_returns_to_its_inputs():
    """A transposed conv after a padded strided one (same geometry) inverts its map exactly."""
    coords = _grid_coords(SHAPE, 50, seed=3)
    feats = torch.randn(len(coords), 2, dtype=torch.float64)
    w = torch.randn(27, 2, 2, dtype=torch.float64)
    x = sc.SparseTensor(feats, coords)
    down = conv3d(x, w, kernel_size=3, stride=2, padding=1, spatial_shape=SHAPE,
                  downsample_mode="spconv")  # fmt: skip
    up = conv3d(down, w, kernel_size=3, stride=2, padding=1, transposed=True,
                downsample_mode="spconv")  # fmt: skip
    assert torch.equal(up.coords, coords)
    down_map = x.cache.kmaps[next(k for k in x.cache.kmaps if not k[4])]
    up_map = next(m for k, m in x.cache.kmaps.items() if k[4])
    assert torch.equal(up_map.in_idx, down_map.transposed(coords).in_idx)


def test_padding_without_shape_keeps_outputs_below_zero():
    """Unbounded (no spatial_shape), a padded conv keeps the outputs at negative positions."""
    coords = torch.tensor([[0, 0, 0, 0]], dtype=torch.int32)
    x = sc.SparseTensor(torch.ones(1, 1), coords)
    y = conv3d(x, torch.ones(27, 1, 1), kernel_size=3, stride=2, padding=1,
               downsample_mode="spconv")  # fmt: skip
    assert y.coords.tolist() == [[0, 0, 0, 0]]
    y = conv3d(x, torch.ones(8, 1, 1), kernel_size=2, stride=1, padding=1,
               downsample_mode="spconv", submanifold=False)  # fmt: skip
    assert len(y.coords) == 8 and int(y.coords[:, 1:].min()) == 0
    free = conv3d(x, torch.ones(27, 1, 1), kernel_size=3, submanifold=False)
    assert len(free.coords) == 27
    bounded = conv3d(x, torch.ones(27, 1, 1), kernel_size=3, spatial_shape=(3, 3, 3),
                     submanifold=False)  # fmt: skip
    assert bounded.coords.tolist() == [[0, 0, 0, 0]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(padding=1), "padding .* needs a strided or transposed conv"),
        (dict(padding=-1, stride=2), "padding must be >= 0"),
        (dict(stride=2, spatial_shape=(1, 1, 1), kernel_size=3), "leaves no output"),
        (dict(stride=2, output_padding=1), "output_padding applies to transposed"),
        (dict(stride=2, spatial_shape=(0, 4, 4)), "spatial_shape must be >= 1"),
    ],
)
def test_bad_geometry(kwargs, match):
    x = sc.SparseTensor(torch.ones(1, 1), torch.zeros(1, 4, dtype=torch.int32))
    k = kwargs.pop("kernel_size", 3)
    with pytest.raises(ValueError, match=match):
        conv3d(x, torch.ones(k**3, 1, 1), kernel_size=k, **kwargs)


def test_layer_padding_in_repr_and_state():
    layer = sc.nn.Conv3d(2, 3, 3, stride=2, padding=1, spatial_shape=(8, 8, 8))
    assert "padding=(1, 1, 1)" in repr(layer)
    with pytest.raises(ValueError, match="needs a strided or transposed"):
        sc.nn.Conv3d(2, 3, 3, padding=1)
    coords = _grid_coords((8, 8, 8), 30, seed=1)
    x = sc.SparseTensor(torch.randn(len(coords), 2), coords)
    y = layer(x)
    assert torch.equal(layer.kernel_map(x).out_coords, y.coords)
    assert int(y.coords[:, 1:].max()) < 8
