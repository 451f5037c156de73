"""Open-addressing (linear probing) hash table of int64 coordinate keys, in Triton.

Same table semantics as the vectorized-torch table in ``sparseconv.maps.hashtable``: ``cap`` is a
power of two, an empty slot holds key -1, the home slot is :func:`_hash_slot` (bit-for-bit the
torch ``hash_slots``), collisions probe the next slot. Insertion claims a slot with
``atomic_cas``; because ``atomic_cas`` takes no mask, lanes that are finished CAS a sentinel slot
``cap`` with a compare value (-2) that never matches, which writes nothing.
"""

import torch
import triton
import triton.language as tl

EMPTY = -1
# globals read inside @triton.jit functions must be constexpr objects (compiled kernels refuse
# plain ints; the interpreter accepts both)
_EMPTY = tl.constexpr(EMPTY)
_NEVER = tl.constexpr(-2)
_FIB_MULTIPLIER = tl.constexpr(-7046029254386353131)  # 0x9E3779B97F4A7C15 as int64, as in torch


@triton.jit
def _hash_slot(key, mask, SHIFT: tl.constexpr):
    return ((key * _FIB_MULTIPLIER) >> SHIFT) & mask


@triton.jit
def _insert_kernel(
    keys_ptr, n, tkeys_ptr, tvals_ptr, dup_ptr, mask, cap, SHIFT: tl.constexpr, BLOCK: tl.constexpr
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    key = tl.load(keys_ptr + offs, mask=valid, other=0)
    slot = _hash_slot(key, mask, SHIFT)
    done = offs >= n
    dup = offs < 0
    probes = 0
    while (tl.sum((~done).to(tl.int32), axis=0) > 0) & (probes <= mask):
        target = tl.where(done, cap, slot)
        cmp = tl.where(done, _NEVER, _EMPTY).to(tl.int64)
        new = tl.where(done, _NEVER, key).to(tl.int64)
        prev = tl.atomic_cas(tkeys_ptr + target, cmp, new)
        won = (~done) & (prev == _EMPTY)
        tl.store(tvals_ptr + slot, offs.to(tl.int32), mask=won)
        dup = dup | ((~done) & (prev == key))
        done = done | won | (prev == key)
        slot = tl.where(done, slot, (slot + 1) & mask)
        probes += 1
    tl.store(dup_ptr + offs, dup.to(tl.int8), mask=valid)


@triton.jit
def _query_kernel(
    q_ptr, n, tkeys_ptr, tvals_ptr, out_ptr, mask, SHIFT: tl.constexpr, BLOCK: tl.constexpr
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    q = tl.load(q_ptr + offs, mask=valid, other=0)
    slot = _hash_slot(q, mask, SHIFT)
    result = tl.full((BLOCK,), -1, tl.int32)
    done = ~valid
    probes = 0
    while (tl.sum((~done).to(tl.int32), axis=0) > 0) & (probes <= mask):
        k = tl.load(tkeys_ptr + slot, mask=~done, other=_EMPTY)
        hit = (~done) & (k == q)
        v = tl.load(tvals_ptr + slot, mask=hit, other=-1)
        result = tl.where(hit, v, result)
        done = done | hit | (k == _EMPTY)
        slot = tl.where(done, slot, (slot + 1) & mask)
        probes += 1
    tl.store(out_ptr + offs, result, mask=valid)


def _shift(cap: int) -> int:
    return 64 - (cap - 1).bit_length()


def build(keys: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Insert ``keys`` (int64, values = positions); returns table keys, values, duplicate flags."""
    n = keys.numel()
    tkeys = torch.full((cap + 1,), EMPTY, dtype=torch.int64, device=keys.device)
    tvals = torch.full((cap,), -1, dtype=torch.int32, device=keys.device)
    dup = torch.zeros(n, dtype=torch.int8, device=keys.device)
    if n:
        block = 256
        _insert_kernel[(triton.cdiv(n, block),)](
            keys.contiguous(), n, tkeys, tvals, dup, cap - 1, cap, SHIFT=_shift(cap), BLOCK=block
        )
    return tkeys[:cap], tvals, dup.bool()


def query(tkeys: torch.Tensor, tvals: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Value (int32 position) of each query key, -1 where absent."""
    n = queries.numel()
    cap = tkeys.numel()
    out = torch.empty(n, dtype=torch.int32, device=queries.device)
    if n:
        block = 256
        _query_kernel[(triton.cdiv(n, block),)](
            queries.contiguous(), n, tkeys, tvals, out, cap - 1, SHIFT=_shift(cap), BLOCK=block
        )
    return out
