"""SemanticKITTI label ids and the official raw-id -> 19-class learning map."""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255
SEMANTICKITTI_CLASSES = (
    "car", "bicycle", "motorcycle", "truck", "other-vehicle", "person", "bicyclist", "motorcyclist",
    "road", "parking", "sidewalk", "other-ground", "building", "fence", "vegetation", "trunk",
    "terrain", "pole", "traffic-sign",
)  # fmt: skip
_RAW_TO_NAME = {
    10: "car", 252: "car", 11: "bicycle", 15: "motorcycle", 18: "truck", 258: "truck",
    13: "other-vehicle", 16: "other-vehicle", 20: "other-vehicle", 256: "other-vehicle",
    257: "other-vehicle", 259: "other-vehicle", 30: "person", 254: "person", 31: "bicyclist",
    253: "bicyclist", 32: "motorcyclist", 255: "motorcyclist", 40: "road", 60: "road",
    44: "parking", 48: "sidewalk", 49: "other-ground", 50: "building", 51: "fence",
    70: "vegetation", 71: "trunk", 72: "terrain", 80: "pole", 81: "traffic-sign",
}  # fmt: skip


def semantickitti_learning_map() -> np.ndarray:
    """Lookup table ``[65536]``: raw semantic id -> train id 0..18, everything else ``IGNORE_INDEX``."""
    lut = np.full(1 << 16, IGNORE_INDEX, dtype=np.uint8)
    for raw, name in _RAW_TO_NAME.items():
        lut[raw] = SEMANTICKITTI_CLASSES.index(name)
    return lut


# nuScenes-lidarseg: 32 raw classes -> the 16 classes of the lidarseg challenge. Raw ids not
# listed (noise, animal, personal mobility, stroller, wheelchair, debris, pushable/pullable,
# bicycle rack, ambulance, police vehicle, static.other, ego vehicle) are ignored.
NUSCENES_CLASSES = (
    "barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle", "pedestrian",
    "traffic_cone", "trailer", "truck", "driveable_surface", "other_flat", "sidewalk", "terrain",
    "manmade", "vegetation",
)  # fmt: skip
_NUSCENES_RAW_TO_NAME = {
    9: "barrier", 14: "bicycle", 15: "bus", 16: "bus", 17: "car", 18: "construction_vehicle",
    21: "motorcycle", 2: "pedestrian", 3: "pedestrian", 4: "pedestrian", 6: "pedestrian",
    12: "traffic_cone", 22: "trailer", 23: "truck", 24: "driveable_surface", 25: "other_flat",
    26: "sidewalk", 27: "terrain", 28: "manmade", 30: "vegetation",
}  # fmt: skip


def nuscenes_learning_map() -> np.ndarray:
    """Lookup table ``[256]``: nuScenes-lidarseg raw id -> train id 0..15, else ``IGNORE_INDEX``."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for raw, name in _NUSCENES_RAW_TO_NAME.items():
        lut[raw] = NUSCENES_CLASSES.index(name)
    return lut
