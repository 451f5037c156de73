"""Progress bars on long work, imported only when one is drawn (``import sparseconv`` stays light)."""

from __future__ import annotations

from typing import Any


def progress_bar(*args: Any, **kwargs: Any) -> Any:
    """``tqdm.auto.tqdm(*args, **kwargs)``; tqdm is a core dependency, loaded on first use."""
    from tqdm.auto import tqdm

    return tqdm(*args, **kwargs)
