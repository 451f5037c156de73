import pytest
import torch
from reference import TRITON_DEVICE, random_coords

from sparseconv.maps import HashTable, keys, tables


def test_pack_roundtrip_and_offset_add_at_range_edges():
    c = torch.tensor(
        [
            [0, keys.COORD_MIN, keys.COORD_MAX, 0],
            [keys.BATCH_MAX, keys.COORD_MAX, keys.COORD_MIN, -5],
            [3, -1, 0, 1],
        ],
        dtype=torch.int32,
    )
    k = keys.pack(c)
    assert torch.equal(keys.unpack(k), c)
    assert bool((k >= 0).all())
    for delta in [(1, -1, 2), (-keys.MAX_OFFSET, keys.MAX_OFFSET, 7)]:
        shifted = c.clone()
        shifted[:, 1:] += torch.tensor(delta, dtype=torch.int32)
        # the shifted coordinate may leave the valid range, but its key is still exact
        assert torch.equal(k + keys.pack_offset(delta), keys.pack(shifted))


@pytest.mark.parametrize("n", [0, 1, 3, 100_000])  # 100 k: the threaded C pass
def test_c_packing_equals_the_torch_packing(n, monkeypatch):
    gen = torch.Generator().manual_seed(n)
    c = torch.randint(keys.COORD_MIN, keys.COORD_MAX + 1, (n, 4), generator=gen, dtype=torch.int32)
    c[:, 0] = torch.randint(0, keys.BATCH_MAX + 1, (n,), generator=gen, dtype=torch.int32)
    packed, unpacked = keys.pack(c), keys.unpack(keys.pack(c))
    with monkeypatch.context() as patch:
        patch.setattr(keys, "_native", lambda t, dtype: False)
        assert torch.equal(packed, keys.pack(c))
        assert torch.equal(unpacked, keys.unpack(packed))
    assert torch.equal(unpacked, c)
    ordered = packed.sort().values
    assert tables.is_sorted(ordered) and tables.is_sorted(ordered[:1])
    assert n < 3 or not tables.is_sorted(ordered.flip(0))


def test_shift_preserves_key_order():
    c = random_coords(500, extent=40, seed=1)
    k = keys.pack(c).sort().values
    shifted = k + keys.pack_offset((-3, 5, -2))
    assert bool((shifted[1:] > shifted[:-1]).all())


@pytest.mark.parametrize(
    "coords,exc,needle",
    [
        (torch.zeros((3, 4)), TypeError, "int32"),
        (torch.zeros((3, 4), dtype=torch.int64), TypeError, "int32"),
        (torch.zeros((3, 3), dtype=torch.int32), ValueError, "[N, 4]"),
        (torch.tensor([[0, 20000, 0, 0]], dtype=torch.int32), ValueError, "-16384"),
        (torch.tensor([[-1, 0, 0, 0]], dtype=torch.int32), ValueError, "batch"),
    ],
)
def test_bad_coords_are_rejected(coords, exc, needle):
    with pytest.raises(exc, match=None) as info:
        keys.check_coords(coords)
    assert needle in str(info.value) and "coords" in str(info.value)


def test_offset_beyond_guard_band_is_rejected():
    with pytest.raises(ValueError, match="guard band"):
        keys.pack_offset((keys.MAX_OFFSET + 1, 0, 0))


def test_hash_table_build_query_and_duplicates():
    c = random_coords(2000, extent=30, seed=2)
    k = keys.pack(c)
    t = HashTable.build(k)
    assert torch.equal(t.query(k), torch.arange(len(k), dtype=torch.int32))
    missing = k + keys.pack_offset((0, 0, 1000))
    assert bool((t.query(missing) == -1).all())
    with pytest.raises(ValueError, match="duplicate"):
        HashTable.build(torch.cat([k, k[:3]]))


def test_triton_hash_table_matches_torch_table():
    c = random_coords(300, extent=12, seed=7).to(TRITON_DEVICE)
    k = keys.pack(c)
    q = torch.cat([k, k + keys.pack_offset((1, 0, 0)), k + keys.pack_offset((0, -1, 1))])
    t_torch = HashTable.build(k, use_triton=False)
    t_triton = HashTable.build(k, use_triton=True)
    assert torch.equal(t_torch.query(q, use_triton=False), t_triton.query(q, use_triton=True))
    assert torch.equal(t_triton.query(q, use_triton=False), t_torch.query(q, use_triton=True))
    with pytest.raises(ValueError, match="duplicate"):
        HashTable.build(torch.cat([k, k[:2]]), use_triton=True)
