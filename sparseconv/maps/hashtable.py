"""Open-addressing hash table from packed coordinate keys to row indices.

The table is two flat arrays (``keys`` int64 with -1 for empty, ``vals`` int32) of power-of-two
capacity, linear probing from the home slot :func:`hash_slots`. On CPU every operation is
vectorized torch: all keys probe their current slot at once and only the colliding ones go round
again, so a build or query costs a handful of passes over the data rather than a Python loop per
key. On CUDA the same table is built and queried by the Triton kernels in
``sparseconv.kernels.hash_table`` (identical hash and probing). The build detects duplicate keys
for free: a key that meets its own key while probing is a duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EMPTY = -1


# Fibonacci hashing: the top bits of key * 2**64/phi (wrapping int64 multiply) mix every key bit.
FIB_MULTIPLIER = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64


def capacity_for(n: int) -> int:
    """Power-of-two capacity with load factor at most 1/4 (short probe chains)."""
    return max(16, 1 << (max(4 * n, 1) - 1).bit_length())


def hash_slots(keys: torch.Tensor, mask: int) -> torch.Tensor:
    """Home slot of each key; bit-identical to the Triton ``_hash_slot``.

    In-place ``torch.bitwise_right_shift`` is used on purpose: the ``>>`` operator on a tensor is
    several times slower on CPU (it materialises a scalar tensor).
    """
    bits = mask.bit_length()
    slot = torch.mul(keys, FIB_MULTIPLIER)
    slot.bitwise_right_shift_(64 - bits)
    return slot.bitwise_and_(mask)


@dataclass
class HashTable:
    keys: torch.Tensor
    vals: torch.Tensor

    @classmethod
    def build(
        cls, keys: torch.Tensor, use_triton: bool | None = None, check_duplicates: bool = True
    ) -> HashTable:
        """Table mapping ``keys[i] -> i``; raises ``ValueError`` on duplicate keys.

        ``check_duplicates=False`` skips reading the duplicate flags back (a device sync) for
        keys already known to be unique (a ``SparseTensor``'s checked coordinates).
        """
        cap = capacity_for(keys.numel())
        if _want_triton(keys, use_triton):
            from sparseconv.kernels import hash_table as triton_table

            tkeys, tvals, dup = triton_table.build(keys, cap)
        else:
            tkeys, tvals, dup = _build_torch(keys, cap)
        if check_duplicates and bool(dup.any()):
            raise ValueError(
                f"coords contain {int(dup.sum())} duplicate coordinate(s); "
                "use sparseconv.voxelize to merge points that fall into the same voxel"
            )
        return cls(tkeys, tvals)

    def query(self, queries: torch.Tensor, use_triton: bool | None = None) -> torch.Tensor:
        """int32 row index of every query key, -1 where the key is absent."""
        if _want_triton(queries, use_triton):
            from sparseconv.kernels import hash_table as triton_table

            return triton_table.query(self.keys, self.vals, queries)
        return _query_torch(self.keys, self.vals, queries)


def _want_triton(t: torch.Tensor, use_triton: bool | None) -> bool:
    return t.is_cuda if use_triton is None else use_triton


def _build_torch(keys: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mask = cap - 1
    n = keys.numel()
    tkeys = torch.full((cap,), EMPTY, dtype=torch.int64, device=keys.device)
    tvals = torch.full((cap,), -1, dtype=torch.int32, device=keys.device)
    dup = torch.zeros(n, dtype=torch.bool, device=keys.device)
    pending = torch.arange(n, device=keys.device)
    pkeys = keys
    slot = hash_slots(keys, mask)
    for _ in range(cap):
        if pending.numel() == 0:
            break
        occupant = tkeys[slot]
        is_dup = occupant == pkeys
        dup[pending[is_dup]] = True
        empty = occupant == EMPTY
        # Every key aimed at an empty slot writes its id there; exactly one write per slot wins.
        ids = pending.int()
        tvals[slot[empty]] = ids[empty]
        won = torch.zeros_like(empty)
        won[empty] = tvals[slot[empty]] == ids[empty]
        tkeys[slot[won]] = pkeys[won]
        # Losers of a race stay on the slot (so an equal key there is caught as a duplicate);
        # keys that met an occupied slot probe the next one.
        keep = ~won & ~is_dup
        slot = torch.where(empty, slot, (slot + 1) & mask)[keep]
        pending = pending[keep]
        pkeys = pkeys[keep]
    return tkeys, tvals, dup


def _query_torch(tkeys: torch.Tensor, tvals: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    mask = tkeys.numel() - 1
    slot = hash_slots(queries, mask)
    occupant = tkeys.index_select(0, slot)
    result = tvals.index_select(0, slot)
    miss = occupant != queries
    result.masked_fill_(miss, -1)
    # Only queries that met another key in their home slot probe further (few at load <= 1/4);
    # the loop works on compressed copies so each round costs O(still probing).
    active = (miss & (occupant != EMPTY)).nonzero().squeeze(1)
    slot_a = slot.index_select(0, active)
    q_a = queries.index_select(0, active)
    while active.numel():
        slot_a.add_(1).bitwise_and_(mask)
        occupant = tkeys.index_select(0, slot_a)
        hit = occupant == q_a
        if bool(hit.any()):
            result[active[hit]] = tvals.index_select(0, slot_a[hit])
        go_on = ~hit & (occupant != EMPTY)
        active, slot_a, q_a = active[go_on], slot_a[go_on], q_a[go_on]
    return result
