"""``SparseTensor``: features on sparse integer coordinates, plus the shared map cache."""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch

from sparseconv.maps import keys as coord_keys
from sparseconv.maps import tables
from sparseconv.maps.cache import MapCache
from sparseconv.maps.hashtable import HashTable
from sparseconv.maps.offsets import Triple, as_triple


class SparseTensor:
    """Features ``[N, C]`` at coordinates ``[N, 4]`` = ``(batch, x, y, z)`` int32.

    Coordinates are in voxel units of the input grid: a tensor at stride 4 keeps coordinates that
    are multiples of 4 (TorchSparse/MinkowskiEngine convention). Coordinates must be unique and in
    the packable range; the constructor checks that (uniqueness through the hash table it builds
    anyway, so that check is almost free) unless ``check=False`` is given by code that guarantees
    it, such as a conv producing outputs.
    ``cache`` is shared by every tensor derived from this one, so layers reuse kernel maps.
    """

    def __init__(
        self,
        feats: torch.Tensor,
        coords: torch.Tensor,
        stride: int | Sequence[int] = 1,
        cache: MapCache | None = None,
        check: bool = True,
    ) -> None:
        if not isinstance(feats, torch.Tensor):
            raise TypeError(f"feats must be a torch.Tensor, got {type(feats).__name__}")
        if feats.dim() != 2:
            raise ValueError(f"feats must have shape [N, C], got {list(feats.shape)}")
        coord_keys.check_coords(coords, values=check)
        if feats.shape[0] != coords.shape[0]:
            raise ValueError(
                f"feats and coords must have the same length, got {feats.shape[0]} and {coords.shape[0]}"
            )
        if feats.device != coords.device:
            raise ValueError(f"feats are on {feats.device} but coords on {coords.device}")
        self.feats = feats
        self.coords = coords
        self.stride: Triple = as_triple(
            tuple(stride) if not isinstance(stride, int) else stride, "stride"
        )
        self.cache = cache if cache is not None else MapCache()
        if check and coords.shape[0]:
            if any(s > 1 for s in self.stride) and bool(
                (torch.remainder(coords[:, 1:], coords.new_tensor(self.stride)) != 0).any()
            ):
                raise ValueError(f"coords must be multiples of the tensor stride {self.stride}")
            keys = coord_keys.pack(coords)
            if tables.native(coords.device):
                tables.check_unique(keys)  # the C mapper needs no cached table
            else:
                # Building the table raises on duplicates; keep it, the first conv needs it.
                table = HashTable.build(keys)
                if self.stride not in self.cache.coords:
                    self.cache.tables[self.stride] = table
        if not torch.compiler.is_compiling():  # traced code keeps its own cache (functional.traced)
            self.cache.coords.setdefault(self.stride, coords)

    # -- basic properties -------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.coords.shape[0])

    @property
    def shape(self) -> torch.Size:
        return self.feats.shape

    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def dtype(self) -> torch.dtype:
        return self.feats.dtype

    @property
    def batch_size(self) -> int:
        return int(self.coords[:, 0].max()) + 1 if len(self) else 0

    def __repr__(self) -> str:
        return (
            f"SparseTensor(n={len(self)}, channels={self.feats.shape[1]}, stride={self.stride}, "
            f"dtype={self.feats.dtype}, device={self.device})"
        )

    # -- derived tensors -------------------------------------------------------------------
    def replace_feats(self, feats: torch.Tensor) -> SparseTensor:
        """Same coordinates and cache, new features (what every pointwise layer returns)."""
        if feats.dim() != 2 or feats.shape[0] != self.coords.shape[0]:
            raise ValueError(f"new feats must have shape [{len(self)}, C], got {list(feats.shape)}")
        return SparseTensor(feats, self.coords, self.stride, cache=self.cache, check=False)

    def to(self, *args, **kwargs) -> SparseTensor:
        """``torch.Tensor.to`` semantics for the features; coords follow a device change."""
        feats = self.feats.to(*args, **kwargs)
        if feats.device == self.coords.device:
            return SparseTensor(feats, self.coords, self.stride, cache=self.cache, check=False)
        return SparseTensor(feats, self.coords.to(feats.device), self.stride, check=False)

    def cpu(self) -> SparseTensor:
        return self.to("cpu")

    def cuda(self) -> SparseTensor:
        return self.to("cuda")

    def half(self) -> SparseTensor:
        return self.replace_feats(self.feats.half())

    def float(self) -> SparseTensor:
        return self.replace_feats(self.feats.float())

    def dense(
        self, spatial_range: tuple[Sequence[int], Sequence[int]] | None = None
    ) -> torch.Tensor:
        """Dense ``[B, C, X, Y, Z]`` grid at this tensor's stride.

        ``spatial_range = (min_xyz, max_xyz)`` in voxel units (inclusive); by default the bounding
        box of the coordinates. Cell ``i`` along x holds coordinate ``min_x + i * stride_x``.
        """
        lo, hi = _bounds(self.coords, spatial_range)
        s = torch.tensor(self.stride, device=self.device)
        size = ((hi - lo) // s + 1).tolist()
        out = self.feats.new_zeros((max(self.batch_size, 1), self.feats.shape[1], *size))
        if len(self):
            idx = (self.coords[:, 1:].long() - lo) // s
            if bool((idx < 0).any()) or bool((idx >= torch.tensor(size, device=self.device)).any()):
                raise ValueError("spatial_range does not contain every coordinate")
            out[self.coords[:, 0].long(), :, idx[:, 0], idx[:, 1], idx[:, 2]] = self.feats
        return out

    @classmethod
    def from_dense(
        cls, grid: torch.Tensor, origin: Sequence[int] = (0, 0, 0), stride: int | Sequence[int] = 1
    ) -> SparseTensor:
        """Non-zero cells (any channel) of a ``[B, C, X, Y, Z]`` grid as a sparse tensor."""
        if grid.dim() != 5:
            raise ValueError(f"grid must have shape [B, C, X, Y, Z], got {list(grid.shape)}")
        s = torch.tensor(
            as_triple(tuple(stride) if not isinstance(stride, int) else stride, "stride")
        )
        nz = (grid != 0).any(dim=1).nonzero()
        feats = grid[nz[:, 0], :, nz[:, 1], nz[:, 2], nz[:, 3]]
        xyz = nz[:, 1:] * s.to(grid.device) + torch.tensor(list(origin), device=grid.device)
        coords = torch.cat([nz[:, :1], xyz], dim=1).int()
        return cls(feats, coords, stride=tuple(s.tolist()))


def _bounds(coords: torch.Tensor, spatial_range) -> tuple[torch.Tensor, torch.Tensor]:
    if spatial_range is not None:
        lo = torch.tensor(list(spatial_range[0]), device=coords.device)
        hi = torch.tensor(list(spatial_range[1]), device=coords.device)
        return lo.long(), hi.long()
    if coords.shape[0] == 0:
        z = torch.zeros(3, dtype=torch.long, device=coords.device)
        return z, z - 1
    return coords[:, 1:].amin(0).long(), coords[:, 1:].amax(0).long()


def sparse_collate(tensors: Sequence[SparseTensor]) -> SparseTensor:
    """Batch several single-scan tensors into one, setting the batch index to the list position."""
    if not tensors:
        raise ValueError("sparse_collate needs at least one tensor")
    strides = {t.stride for t in tensors}
    if len(strides) != 1:
        raise ValueError(f"cannot collate tensors of different strides {sorted(strides)}")
    coords = []
    for b, t in enumerate(tensors):
        c = t.coords.clone()
        c[:, 0] = b
        coords.append(c)
    feats = torch.cat([t.feats for t in tensors])
    return SparseTensor(feats, torch.cat(coords), stride=tensors[0].stride)


def _flatten(x: SparseTensor) -> tuple[list[torch.Tensor], Triple]:
    return [x.feats, x.coords], x.stride


def _flatten_with_keys(x: SparseTensor):
    keys = torch.utils._pytree.GetAttrKey
    return [(keys("feats"), x.feats), (keys("coords"), x.coords)], x.stride


def _unflatten(values, stride: Triple) -> SparseTensor:
    # rebuilt inside a trace (torch.export): checked when the caller built it
    return SparseTensor(values[0], values[1], stride, check=False)


# a pytree node, so that torch.export takes a SparseTensor input (its map cache is not exported)
torch.utils._pytree.register_pytree_node(
    SparseTensor,
    _flatten,
    _unflatten,
    serialized_type_name="sparseconv.SparseTensor",
    flatten_with_keys_fn=_flatten_with_keys,
    # a saved ExportedProgram keeps the stride as JSON; it must come back a tuple
    to_dumpable_context=lambda stride: json.dumps(list(stride)),
    from_dumpable_context=lambda text: tuple(json.loads(text)),
)
