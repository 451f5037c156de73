"""Synthetic LiDAR: procedural street scenes raycast with Open3D, labelled with SemanticKITTI ids.

A scene is a road between kerbed sidewalks, terrain strips, building facades, parked cars and
trucks, people, poles, signs and trees (trunk + crown), all as triangle meshes. A 64-beam rotating
sensor (HDL-64E-like: elevation -24.8 deg .. +2 deg, ``azimuth_steps`` columns) is raycast with
Open3D's ``RaycastingScene``; hits get range noise, random dropout and a per-material remission.
Everything is drawn from ``numpy.random.default_rng(seed)``, so a seed gives the same scan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparseconv.utils.optional import require

RAW = {"road": 40, "sidewalk": 48, "terrain": 72, "building": 50, "car": 10, "truck": 18,
       "person": 30, "pole": 80, "traffic-sign": 81, "trunk": 71, "vegetation": 70, "fence": 51}  # fmt: skip
REMISSION = {"road": 0.25, "sidewalk": 0.35, "terrain": 0.45, "building": 0.3, "car": 0.6, "truck": 0.55,
             "person": 0.4, "pole": 0.5, "traffic-sign": 0.9, "trunk": 0.35, "vegetation": 0.5, "fence": 0.4}  # fmt: skip


@dataclass
class SceneConfig:
    beams: int = 64
    azimuth_steps: int = 2048
    elevation_deg: tuple[float, float] = (-24.8, 2.0)
    sensor_height: float = 1.73
    max_range: float = 80.0
    range_noise: float = 0.02
    dropout: float = 0.05
    length: float = 120.0


def _box(o3d, center, size, yaw=0.0):
    mesh = o3d.geometry.TriangleMesh.create_box(*size)
    mesh.translate(-np.asarray(size) / 2)
    rot = mesh.get_rotation_matrix_from_xyz((0.0, 0.0, yaw))
    mesh.rotate(rot, center=(0, 0, 0))
    mesh.translate(center)
    return mesh


def _scene_meshes(rng: np.random.Generator, cfg: SceneConfig):
    o3d = require("open3d", "the synthetic scan generator")

    half = cfg.length / 2
    road_w = rng.uniform(6.5, 9.0)
    walk_w = rng.uniform(2.0, 3.5)
    items = [("road", _box(o3d, (0, 0, -0.05), (cfg.length, road_w, 0.1)))]
    for side in (-1, 1):
        y_walk = side * (road_w / 2 + walk_w / 2)
        items.append(("sidewalk", _box(o3d, (0, y_walk, 0.075), (cfg.length, walk_w, 0.15))))
        y_terr = side * (road_w / 2 + walk_w + 2.0)
        items.append(("terrain", _box(o3d, (0, y_terr, 0.0), (cfg.length, 4.0, 0.1))))
        y_bld = side * (road_w / 2 + walk_w + 4.0 + 5.0)
        x = -half
        while x < half:
            w = rng.uniform(8, 20)
            h = rng.uniform(5, 15)
            if rng.random() < 0.8:
                items.append(("building", _box(o3d, (x + w / 2, y_bld, h / 2), (w, 10.0, h))))
            else:
                items.append(
                    ("fence", _box(o3d, (x + w / 2, y_bld - side * 4.8, 0.8), (w, 0.1, 1.6)))
                )
            x += w + rng.uniform(0.5, 4)
        for x in rng.uniform(-half, half, rng.integers(3, 7)):
            kind = "truck" if rng.random() < 0.2 else "car"
            size = (
                (rng.uniform(6, 9), 2.5, 3.0)
                if kind == "truck"
                else (rng.uniform(3.8, 4.8), 1.8, 1.5)
            )
            y = side * (road_w / 2 - 1.3)
            items.append((kind, _box(o3d, (x, y, size[2] / 2 + 0.15), size, rng.normal(0, 0.05))))
        for x in rng.uniform(-half, half, rng.integers(3, 8)):
            y = side * (road_w / 2 + rng.uniform(0.3, walk_w - 0.3))
            items.append(("person", _box(o3d, (x, y, 0.15 + 0.85), (0.5, 0.5, 1.7))))
        for x in np.arange(-half + rng.uniform(0, 10), half, rng.uniform(12, 20)):
            y = side * (road_w / 2 + 0.3)
            items.append(("pole", _box(o3d, (x, y, 3.5), (0.2, 0.2, 7.0))))
            if rng.random() < 0.4:
                items.append(
                    ("traffic-sign", _box(o3d, (x, y + side * 0.2, 2.6), (0.05, 0.8, 0.8)))
                )
        for x in np.arange(-half + rng.uniform(0, 8), half, rng.uniform(7, 14)):
            y = side * (road_w / 2 + walk_w + rng.uniform(1.0, 3.0))
            th = rng.uniform(1.5, 3)
            items.append(("trunk", _box(o3d, (x, y, th / 2), (0.35, 0.35, th))))
            crown = o3d.geometry.TriangleMesh.create_sphere(rng.uniform(1.5, 2.8), resolution=8)
            crown.translate((x, y, th + 1.5))
            items.append(("vegetation", crown))
    return items


def synthesize_scan(seed: int, cfg: SceneConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One scan: float32 ``[N, 4]`` (x, y, z, remission) and uint32 SemanticKITTI labels ``[N]``."""
    o3d = require("open3d", "the synthetic scan generator")

    cfg = cfg or SceneConfig()
    rng = np.random.default_rng(seed)
    scene = o3d.t.geometry.RaycastingScene()
    names = []
    for name, mesh in _scene_meshes(rng, cfg):
        scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
        names.append(name)
    elev = np.deg2rad(np.linspace(cfg.elevation_deg[0], cfg.elevation_deg[1], cfg.beams))
    azim = np.linspace(-np.pi, np.pi, cfg.azimuth_steps, endpoint=False)
    el, az = np.meshgrid(elev, azim, indexing="ij")
    dirs = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1).reshape(
        -1, 3
    )
    origin = np.array([rng.uniform(-5, 5), rng.uniform(-1, 1), cfg.sensor_height])
    rays = np.concatenate([np.broadcast_to(origin, dirs.shape), dirs], 1).astype(np.float32)
    hit = scene.cast_rays(o3d.core.Tensor(rays))
    t = hit["t_hit"].numpy()
    gid = hit["geometry_ids"].numpy()
    keep = np.isfinite(t) & (t < cfg.max_range) & (rng.random(t.shape) > cfg.dropout)
    t = t[keep] + rng.normal(0, cfg.range_noise, keep.sum())
    xyz = dirs[keep] * t[:, None] + origin - np.array([0, 0, cfg.sensor_height])
    name_of = np.array(names)[gid[keep]]
    labels = np.array([RAW[n] for n in name_of], dtype=np.uint32)
    remission = np.array([REMISSION[n] for n in name_of]) + rng.normal(0, 0.05, len(name_of))
    pts = np.concatenate([xyz, np.clip(remission, 0, 1)[:, None]], 1).astype(np.float32)
    return pts, labels


def write_synthetic_dataset(
    out: str | os.PathLike,
    train_scans: int = 8,
    val_scans: int = 2,
    seed: int = 0,
    cfg: SceneConfig | None = None,
    progress: bool = True,
) -> Path:
    """Write scans in SemanticKITTI's layout: training scenes as sequence 00, held-out as 08.

    Scan ``i`` of the dataset uses scene seed ``seed * 100_000 + i``, so the training and
    held-out scenes never share a street. Returns ``out``; ``SemanticKITTI(out, "train")`` and
    ``SemanticKITTI(out, "val")`` read it back.
    """
    from tqdm import tqdm

    from sparseconv.datasets.io import write_semantickitti_scan

    if train_scans < 0 or val_scans < 0 or train_scans + val_scans == 0:
        raise ValueError(f"need at least one scan, got train={train_scans}, val={val_scans}")
    out = Path(out)
    jobs = [("00", i, i) for i in range(train_scans)]
    jobs += [("08", i, train_scans + i) for i in range(val_scans)]
    for seq, index, k in tqdm(jobs, desc="synthesise scans", unit="scan", disable=not progress):
        points, labels = synthesize_scan(seed * 100_000 + k, cfg)
        write_semantickitti_scan(out / "sequences" / seq, index, points, labels)
    return out
