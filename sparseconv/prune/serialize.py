"""Save and load pruned models without pickle.

One ``.npz`` file (read with ``allow_pickle=False``) holds every ``state_dict`` tensor plus a
JSON description: the model class and constructor arguments, the shrunk shape of every layer
(with the kept kernel offsets of an offset-pruned conv), the kind of each mask and the settings
of each voxel-pruning layer. :func:`load` builds the original architecture, resizes each layer to
the recorded shapes, re-attaches the masks and loads the tensors -- no code is unpickled, so a
file from an untrusted source cannot run anything.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sparseconv import nn as snn
from sparseconv.prune.masks import masked_layers, set_mask
from sparseconv.prune.voxel import voxel_prune, voxel_pruners

FORMAT = "sparseconv-pruned-v1"
_META = "__sparseconv_meta__"


def _layer_shapes(model: nn.Module) -> dict[str, dict]:
    shapes = {}
    for name, m in model.named_modules():
        if isinstance(m, snn.Conv3d):
            shapes[name] = {"in": m.in_channels, "out": m.out_channels}
            if m.kept_offsets is not None:
                shapes[name]["offsets"] = list(m.offsets())
        elif isinstance(m, nn.Linear):
            shapes[name] = {"in": m.in_features, "out": m.out_features}
        elif isinstance(m, nn.BatchNorm1d):
            shapes[name] = {"features": m.num_features}
    return shapes


def save(model: nn.Module, path: str | Path) -> Path:
    """Write ``model`` (pruned or not) to ``path`` (``.npz``)."""
    path = Path(path)
    init = getattr(model, "init_kwargs", None)
    meta = {
        "format": FORMAT,
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "init_kwargs": init,
        "shapes": _layer_shapes(model),
        "masks": {n: m._sc_mask_kind for n, m in masked_layers(model).items()},
        "voxel_prune": voxel_pruners(model),
        "dtypes": {},
    }
    arrays = {}
    for k, t in model.state_dict().items():
        meta["dtypes"][k] = str(t.dtype).removeprefix("torch.")
        t = t.detach().cpu()
        arrays[k] = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    arrays[_META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path


def _resize(model: nn.Module, shapes: dict[str, dict]) -> None:
    modules = dict(model.named_modules())
    for name, s in shapes.items():
        m = modules.get(name)
        if m is None:
            raise ValueError(f"saved layer {name!r} does not exist in the rebuilt model")
        if isinstance(m, snn.Conv3d):
            m.in_channels, m.out_channels = s["in"], s["out"]
            rows = m.weight.shape[0]
            if "offsets" in s:  # kernel-offset pruned: the kept offsets, then a smaller weight
                m.keep_offsets(s["offsets"])
                rows = len(s["offsets"])
            m.weight = nn.Parameter(m.weight.new_empty(rows, s["in"], s["out"]))
            if m.bias is not None:
                m.bias = nn.Parameter(m.bias.new_empty(s["out"]))
        elif isinstance(m, nn.Linear):
            m.in_features, m.out_features = s["in"], s["out"]
            m.weight = nn.Parameter(m.weight.new_empty(s["out"], s["in"]))
            if m.bias is not None:
                m.bias = nn.Parameter(m.bias.new_empty(s["out"]))
        elif isinstance(m, nn.BatchNorm1d):
            c = s["features"]
            m.num_features = c
            for p in ("weight", "bias"):
                if getattr(m, p) is not None:
                    setattr(m, p, nn.Parameter(getattr(m, p).new_empty(c)))
            for b in ("running_mean", "running_var"):
                if getattr(m, b) is not None:
                    setattr(m, b, getattr(m, b).new_empty(c))


def _build(meta: dict) -> nn.Module:
    if meta["init_kwargs"] is None:
        raise ValueError(
            f"the file does not say how to build {meta['class']}: pass model= (a fresh instance)"
        )
    module, _, cls = meta["class"].rpartition(".")
    if not module.startswith("sparseconv."):
        raise ValueError(f"refusing to import {meta['class']} from a file: pass model= instead")
    kwargs = dict(meta["init_kwargs"])
    if "blocks" in kwargs:
        kwargs["blocks"] = tuple(kwargs["blocks"])
    return getattr(importlib.import_module(module), cls)(**kwargs)


def load(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a model saved by :func:`save`. ``model``: a fresh instance of the unpruned
    architecture, needed for user-defined classes (sparseconv's models rebuild themselves)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pruned-model file not found: {path}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:  # numpy's own message talks about allow_pickle
        raise ValueError(
            f"{path} is not a sparseconv pruned-model file (an .npz written by prune.save): {err}"
        ) from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is not a sparseconv pruned-model file (a single array, not .npz)")
    with archive as data:
        if _META not in data:
            raise ValueError(f"{path} is not a sparseconv pruned-model file (no metadata)")
        meta = json.loads(bytes(data[_META]).decode())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown format {meta.get('format')!r}, expected {FORMAT}")
        tensors = {
            k: torch.from_numpy(data[k].copy()).to(getattr(torch, meta["dtypes"][k]))
            for k in data.files
            if k != _META
        }
    model = model if model is not None else _build(meta)
    for name, settings in meta.get("voxel_prune", {}).items():  # before resizing its scorer
        # files saved before cell granularity existed pruned single voxels
        voxel_prune(model, layers=[name], inplace=True, **{"granularity": "voxel", **settings})
    _resize(model, meta["shapes"])
    modules = dict(model.named_modules())
    for name, kind in meta["masks"].items():
        set_mask(modules[name], tensors[f"{name}.weight_mask" if name else "weight_mask"], kind)
    model.load_state_dict(tensors, strict=True)
    return model
