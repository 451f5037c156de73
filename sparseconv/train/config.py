"""Training configuration: one flat dataclass, read from YAML, overridden by ``key=value`` pairs.

Unknown keys are errors (a typo such as ``lerning_rate`` must not silently train with the
default), and values are checked against the field's type.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DATASETS = ("synthetic", "semantickitti", "nuscenes")
MODELS = ("minkunet", "spvcnn")
OPTIMIZERS = ("sgd", "adamw")
CLASS_WEIGHTS = ("none", "sqrt_inv")


@dataclass
class TrainConfig:
    dataset: str = "synthetic"
    data_root: str | None = None  # synthetic: generated into <out>/data when None
    synth_train_scans: int = 8
    synth_val_scans: int = 2
    train_split: str = "train"
    val_split: str = "val"
    model: str = "minkunet"
    width: float = 1.0
    blocks: list[int] = field(default_factory=lambda: [2] * 8)
    voxel_size: float = 0.05
    max_voxels: int | None = None
    augment: bool = True
    batch_size: int = 2
    steps: int = 1000
    optimizer: str = "sgd"
    lr: float = 0.24
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0
    lovasz_weight: float = 0.0
    class_weights: str = "none"  # "none" or "sqrt_inv": CE weights 1/sqrt(class frequency)
    bn_l1: float = 0.0  # network slimming: add bn_l1 * sum|gamma| to the loss (before pruning)
    amp: bool = True  # CUDA only (float16 autocast); ignored on CPU
    # bfloat16 autocast on CPU (float32 weights and optimizer): on CPUs with AMX-BF16 (Intel
    # Sapphire Rapids and later) a MinkUNet width-1.0 step is about 2x faster (bench net); narrow
    # networks gain nothing (the demo's width 0.25: level), CPUs without AMX lose; off by
    # default because it changes the numerics of a run
    cpu_bf16: bool = False
    eval_every: int = 0  # 0: only at the end
    checkpoint_every: int = 200
    log_every: int = 10
    seed: int = 0
    # every conv on a dataflow without atomics (implicit GEMM): bit-identical reruns
    deterministic: bool = False
    # fewer torch threads while other processes hold the cores: faster on a busy machine, but
    # batch-norm statistics then sum in a load-dependent order (reruns differ in the last bits)
    adaptive_threads: bool = False
    out: str = "runs/train"
    device: str = "auto"
    num_workers: int = 0

    def validate(self) -> TrainConfig:
        for name, allowed in (
            ("dataset", DATASETS),
            ("model", MODELS),
            ("optimizer", OPTIMIZERS),
            ("class_weights", CLASS_WEIGHTS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"config key {name!r}: expected one of {allowed}, got {getattr(self, name)!r}"
                )
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"config key {name!r} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or not self.voxel_size > 0 or not self.width > 0:
            raise ValueError("config keys 'lr', 'voxel_size' and 'width' must be > 0")
        if self.dataset != "synthetic" and self.data_root is None:
            raise ValueError(f"config key 'data_root' is required for dataset {self.dataset!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(name: str, value, default, annotation: str):
    if value is None:
        if "None" in annotation:
            return None
        raise ValueError(f"config key {name!r} cannot be null")
    if isinstance(default, bool) or annotation == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"config key {name!r} must be true or false, got {value!r}")
        return value
    if annotation.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config key {name!r} must be an integer, got {value!r}")
        return value
    if annotation.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config key {name!r} must be a number, got {value!r}")
        return float(value)
    if annotation.startswith("list"):
        if not isinstance(value, list):
            raise ValueError(f"config key {name!r} must be a list, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"config key {name!r} must be a string, got {value!r}")
    return value


def load_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    base: dict | None = None,
) -> TrainConfig:
    """Defaults, then ``base`` (e.g. a checkpoint's config), then the YAML file, then
    ``key=value`` overrides (values parsed as YAML)."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    defaults = TrainConfig()
    values: dict = {}
    sources: list[tuple[str, dict]] = [("checkpoint config", base)] if base else []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config must be a mapping of keys to values")
        sources.append((str(path), loaded))
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like key=value")
        sources.append(("command line", {key.strip(): yaml.safe_load(raw)}))
    for origin, mapping in sources:
        for key, value in mapping.items():
            if key not in fields:
                raise ValueError(
                    f"unknown config key {key!r} ({origin}); valid keys: {', '.join(sorted(fields))}"
                )
            values[key] = _coerce(key, value, getattr(defaults, key), str(fields[key].type))
    return TrainConfig(**values).validate()
