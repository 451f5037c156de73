import warnings

import pytest
import torch
from reference import random_coords

import sparseconv as sc


def test_sparse_tensor_validation():
    coords = random_coords(30, seed=1)
    with pytest.raises(ValueError, match="same length"):
        sc.SparseTensor(torch.randn(len(coords) + 1, 3), coords)
    with pytest.raises(ValueError, match="duplicate"):
        sc.SparseTensor(torch.randn(len(coords) + 1, 3), torch.cat([coords, coords[:1]]))
    with pytest.raises(TypeError, match="int32"):
        sc.SparseTensor(torch.randn(len(coords), 3), coords.float())
    with pytest.raises(ValueError, match="multiples"):
        sc.SparseTensor(torch.randn(len(coords), 3), coords, stride=2)


def test_dense_round_trip_and_collate():
    coords = random_coords(40, seed=2, batches=1)
    x = sc.SparseTensor(torch.randn(len(coords), 3), coords)
    lo = coords[:, 1:].amin(0).tolist()
    grid = x.dense()
    y = sc.SparseTensor.from_dense(grid, origin=lo)
    order_x = torch.argsort(sc.maps.pack(x.coords))
    order_y = torch.argsort(sc.maps.pack(y.coords))
    assert torch.equal(x.coords[order_x], y.coords[order_y])
    torch.testing.assert_close(x.feats[order_x], y.feats[order_y])
    batch = sc.sparse_collate([x, x])
    assert len(batch) == 2 * len(x) and batch.batch_size == 2


def test_voxelize_mean_first_and_index():
    pts = torch.tensor([[0.01, 0.01, 0.01], [0.04, 0.02, 0.03], [0.2, 0.0, 0.0]])
    x, p2v = sc.voxelize(pts, 0.05)
    assert len(x) == 2 and p2v.tolist()[0] == p2v.tolist()[1]
    torch.testing.assert_close(x.feats[p2v[0]], pts[:2].mean(0))
    xf, p2vf = sc.voxelize(pts, 0.05, reduce="first")
    torch.testing.assert_close(xf.feats[p2vf[0]], pts[0])
    back = sc.devoxelize(x, p2v)
    torch.testing.assert_close(back[2], pts[2])


def test_voxelize_bad_input_and_nan_policy():
    pts = torch.tensor([[0.0, 0.0, 0.0], [float("nan"), 0.0, 0.0], [1.0, 1.0, float("inf")]])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        x, p2v = sc.voxelize(pts, 0.1)
    assert "dropped 2" in str(w[0].message)
    assert p2v.tolist()[1:] == [-1, -1] and len(x) == 1
    with pytest.raises(ValueError, match="voxel_size"):
        sc.voxelize(pts[:1], 0.0)
    with pytest.raises(ValueError, match="voxel_size"):
        sc.voxelize(pts[:1], -1.0)
    with pytest.raises(ValueError, match="points"):
        sc.voxelize(torch.zeros(3, 2), 0.1)
    empty, idx = sc.voxelize(torch.zeros(0, 3), 0.1)
    assert len(empty) == 0 and idx.numel() == 0


def test_batched_voxelize():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(500, 3, generator=g)
    b = torch.randint(0, 2, (500,), generator=g).float()
    x, p2v = sc.voxelize(torch.cat([b[:, None], pts], 1), 0.1)
    assert x.batch_size == 2
    assert torch.equal(x.coords[p2v, 0].long(), b.long())


def test_trilinear_devoxelize_is_exact_for_linear_fields():
    # every cell of a 10^3 grid occupied: all 8 corners exist for points between cell centres
    r = torch.arange(10)
    xyz = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    coords = torch.cat([torch.zeros(len(xyz), 1, dtype=torch.long), xyz], 1).int()
    centres = (xyz.double() + 0.5) * 0.1
    a = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    field = sc.SparseTensor((centres @ a)[:, None], coords)
    g = torch.Generator().manual_seed(1)
    pts = 0.05 + 0.9 * torch.rand(300, 3, generator=g, dtype=torch.float64)
    p2v = torch.zeros(300, dtype=torch.long)
    out = sc.devoxelize(field, p2v, mode="trilinear", points=pts, voxel_size=0.1)
    torch.testing.assert_close(out[:, 0], pts @ a)
    with pytest.raises(ValueError, match="points and voxel_size"):
        sc.devoxelize(field, p2v, mode="trilinear")
