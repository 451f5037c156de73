"""Training and evaluation of segmentation networks (``sparseconv train`` / ``eval`` / ``demo``)."""

from sparseconv.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from sparseconv.train.config import TrainConfig, load_config
from sparseconv.train.losses import lovasz_softmax, segmentation_loss
from sparseconv.train.metrics import ConfusionMatrix
from sparseconv.train.trainer import Trainer, build_model, evaluate

__all__ = [
    "CheckpointError", "ConfusionMatrix", "TrainConfig", "Trainer", "build_model", "evaluate",
    "load_checkpoint", "load_config", "lovasz_softmax", "save_checkpoint", "segmentation_loss",
]  # fmt: skip
