"""The top-level namespace the README's API section uses."""

import sparseconv as sc


def test_top_level_modules_are_reachable_as_attributes():
    for name in ("functional", "maps", "models", "nn", "prune"):
        assert hasattr(sc, name), name
    assert callable(sc.models.MinkUNet) and callable(sc.models.SPVCNN)
    assert callable(sc.prune.nm_prune) and callable(sc.prune.accelerate_nm)
