"""Optional dependencies: imported where used, with the install line when they are missing.

The conv library needs only torch, numpy, triton, tqdm and pyyaml. LiDAR file I/O (PLY/PCD) and
the raycasting scan generator need Open3D (extra ``lidar``), plots need matplotlib (extra
``viz``), ONNX export and its runtime onnx, onnxscript, onnxruntime and onnxruntime-extensions
(extra ``deploy``); ``make`` installs all three.
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS = {"open3d": "lidar", "matplotlib": "viz", "onnx": "deploy", "onnxscript": "deploy",
          "onnxruntime": "deploy", "onnxruntime_extensions": "deploy"}  # fmt: skip


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise ImportError saying what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        extra = EXTRAS.get(top)
        how = f"pip install 'sparseconv[{extra}]'" if extra else f"pip install {top}"
        raise ImportError(f"{purpose} needs {top}, which is not installed: {how}") from err


def pyplot(purpose: str) -> ModuleType:
    """matplotlib's pyplot on the file-only Agg backend (plots are written, never shown)."""
    matplotlib = require("matplotlib", purpose)
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")
