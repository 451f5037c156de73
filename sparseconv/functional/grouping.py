"""Adaptive grouping of kernel offsets into batched GEMMs (TorchSparse, MLSys'22).

One GEMM per offset leaves many small, badly shaped matrix products. Offsets whose maps have
similar sizes can run as one padded ``bmm`` instead: fewer calls, larger work items, at the price
of computing on padding rows. The planner sorts offsets by map size and grows a group while the
padded work stays within ``(1 + max_waste)`` of the useful work. ``max_waste=0`` still groups
offsets of exactly equal size (the +-delta pairs of a submanifold map), ``max_waste=inf`` makes
one group of everything.
"""

from __future__ import annotations


def plan_groups(
    sizes: list[int], max_waste: float = 0.25, skip: int | None = None
) -> list[list[int]]:
    """Groups of offset indices; empty offsets and ``skip`` (the identity offset) are left out."""
    if max_waste < 0:
        raise ValueError(f"max_waste must be >= 0, got {max_waste}")
    order = sorted((k for k, n in enumerate(sizes) if n > 0 and k != skip), key=lambda k: -sizes[k])
    groups: list[list[int]] = []
    for k in order:
        if groups:
            group = groups[-1]
            largest = sizes[group[0]]
            useful = sum(sizes[j] for j in group) + sizes[k]
            if largest * (len(group) + 1) <= (1.0 + max_waste) * useful:
                group.append(k)
                continue
        groups.append([k])
    return groups
