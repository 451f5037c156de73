"""Point-cloud augmentations for training: each maps ``(points [N, C], rng) -> (points, keep)``.

``points`` holds x, y, z in the first three columns (metres) and any extra features after them.
``keep`` is a boolean mask (or ``None`` for "all points"): a transform that removes points (the
range crop) must say which, so the labels and the inverse map stay aligned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Transform = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray | None]]


class RandomRotateZ:
    """Rotate about the vertical axis by an angle drawn from ``[-max_angle, max_angle]`` (radians)."""

    def __init__(self, max_angle: float = np.pi) -> None:
        self.max_angle = max_angle

    def __call__(self, pts, rng):
        a = rng.uniform(-self.max_angle, self.max_angle)
        c, s = np.cos(a), np.sin(a)
        out = pts.copy()
        out[:, 0], out[:, 1] = c * pts[:, 0] - s * pts[:, 1], s * pts[:, 0] + c * pts[:, 1]
        return out, None


class RandomScale:
    def __init__(self, low: float = 0.95, high: float = 1.05) -> None:
        if not 0 < low <= high:
            raise ValueError(f"scale range must satisfy 0 < low <= high, got ({low}, {high})")
        self.low, self.high = low, high

    def __call__(self, pts, rng):
        out = pts.copy()
        out[:, :3] *= rng.uniform(self.low, self.high)
        return out, None


class RandomFlip:
    """Mirror x and/or y, each with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, pts, rng):
        out = pts.copy()
        for axis in (0, 1):
            if rng.random() < self.p:
                out[:, axis] = -out[:, axis]
        return out, None


class Jitter:
    """Add Gaussian noise of ``sigma`` metres (clipped at ``clip``) to x, y, z."""

    def __init__(self, sigma: float = 0.01, clip: float = 0.05) -> None:
        self.sigma, self.clip = sigma, clip

    def __call__(self, pts, rng):
        out = pts.copy()
        noise = np.clip(rng.normal(0, self.sigma, (len(pts), 3)), -self.clip, self.clip)
        out[:, :3] += noise.astype(pts.dtype)
        return out, None


class RangeCrop:
    """Keep points whose horizontal range is in ``[min_range, max_range]`` metres."""

    def __init__(self, max_range: float = 50.0, min_range: float = 0.0) -> None:
        if not 0 <= min_range < max_range:
            raise ValueError(f"need 0 <= min_range < max_range, got ({min_range}, {max_range})")
        self.min_range, self.max_range = min_range, max_range

    def __call__(self, pts, rng):
        r = np.hypot(pts[:, 0], pts[:, 1])
        return pts, (r >= self.min_range) & (r <= self.max_range)


class Compose:
    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, pts, rng):
        keep = np.ones(len(pts), dtype=bool)
        for t in self.transforms:
            pts, k = t(pts, rng)
            if k is not None:
                keep &= k
        return pts, keep


def default_train_transforms() -> Compose:
    """The usual SemanticKITTI recipe: full z-rotation, 0.95-1.05 scale, x/y flips, 1 cm jitter."""
    return Compose([RandomRotateZ(), RandomScale(), RandomFlip(), Jitter()])
