"""The training loop: data, model, optimiser, schedule, evaluation, checkpoints and the run folder.

One ``Trainer`` serves ``sparseconv train``, ``sparseconv eval`` and ``sparseconv demo``. Training
counts optimiser steps (not epochs) so a short CPU run and a long GPU run use the same schedule
code; a checkpoint stores the step, the epoch and the position inside it, so ``resume`` continues
the same run (same data order, same schedule) rather than starting a new one.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from sparseconv import datasets
from sparseconv.functional.dataflows import set_autotune
from sparseconv.models import SPVCNN, MinkUNet
from sparseconv.prune.importance import bn_l1_penalty
from sparseconv.train import distributed as dist_util
from sparseconv.train.checkpoint import load_latest, save_checkpoint
from sparseconv.train.config import TrainConfig
from sparseconv.train.losses import segmentation_loss
from sparseconv.train.metrics import ConfusionMatrix
from sparseconv.train.report import plot_bev, plot_curves, write_json
from sparseconv.train.schedule import warmup_cosine
from sparseconv.utils.threads import adaptive_threads

logger = logging.getLogger("sparseconv.train")


def set_deterministic(model: torch.nn.Module) -> None:
    """Every sparse conv of ``model`` on a dataflow without atomics (its sums in a fixed order)."""
    from sparseconv.nn import Conv3d

    for m in model.modules():
        if isinstance(m, Conv3d):
            m.deterministic = True


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} asked for, but this torch build sees no CUDA device")
    return device


def build_datasets(
    cfg: TrainConfig, progress: bool = True
) -> tuple[datasets.ScanDataset, datasets.ScanDataset]:
    root = Path(cfg.data_root) if cfg.data_root else Path(cfg.out) / "data"
    aug = datasets.default_train_transforms() if cfg.augment else None
    common = {"voxel_size": cfg.voxel_size}
    if cfg.dataset in ("synthetic", "semantickitti"):
        if cfg.dataset == "synthetic" and not (root / "sequences").is_dir():
            if dist_util.setup(pick_device(cfg.device))[0] == 0:
                datasets.write_synthetic_dataset(
                    root, cfg.synth_train_scans, cfg.synth_val_scans, cfg.seed, progress=progress
                )
            dist_util.barrier()
        train = datasets.SemanticKITTI(
            root,
            cfg.train_split,
            transforms=aug,
            max_voxels=cfg.max_voxels,
            seed=cfg.seed,
            **common,
        )
        val = datasets.SemanticKITTI(root, cfg.val_split, **common)
    else:
        train = datasets.NuScenesLidarSeg(
            root, transforms=aug, max_voxels=cfg.max_voxels, seed=cfg.seed,
            require_labels=True, **common,
        )  # fmt: skip
        val = datasets.NuScenesLidarSeg(root, require_labels=True, **common)
    return train, val


def build_model(cfg: TrainConfig, num_classes: int, in_channels: int = 4) -> torch.nn.Module:
    cls = SPVCNN if cfg.model == "spvcnn" else MinkUNet
    return cls(in_channels, num_classes, width=cfg.width, blocks=tuple(cfg.blocks))


def point_logits(model: torch.nn.Module, batch: datasets.Batch, voxel_size: float) -> torch.Tensor:
    """Logits for every original point: SPVCNN predicts points; voxel models via ``p2v``."""
    net = model.module if hasattr(model, "module") else model
    if isinstance(net, SPVCNN):
        return model(batch.x, batch.points, voxel_size)
    return model(batch.x)[batch.p2v.clamp(min=0)]


def training_logits(
    model, batch: datasets.Batch, voxel_size: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxel models learn from voxel (majority) labels; SPVCNN from point labels."""
    net = model.module if hasattr(model, "module") else model
    if isinstance(net, SPVCNN):
        return model(batch.x, batch.points, voxel_size), batch.point_labels
    return model(batch.x), batch.voxel_labels


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: datasets.ScanDataset,
    device: torch.device,
    progress: bool = True,
    keep_first: bool = False,
) -> tuple[ConfusionMatrix, dict | None]:
    """Point-level confusion matrix over ``dataset``; optionally the first scan's prediction."""
    was_training = model.training
    model.eval()
    conf = ConfusionMatrix(dataset.num_classes)
    first = None
    for i in tqdm(
        range(len(dataset)), desc="evaluate", unit="scan", disable=not progress, leave=False
    ):
        batch = datasets.collate([dataset[i]]).to(device)
        pred = point_logits(model, batch, dataset.voxel_size).argmax(1)
        pred = torch.where(batch.p2v >= 0, pred, torch.zeros_like(pred))  # unvoxelised: class 0
        conf.update(pred, batch.point_labels)
        if keep_first and first is None:
            first = {"xyz": batch.points[:, 1:].cpu().numpy(), "pred": pred.cpu().numpy(),
                     "target": batch.point_labels.cpu().numpy(), "name": batch.names[0]}  # fmt: skip
    model.train(was_training)
    return conf, first


class Trainer:
    """``model``: train this network instead of building one from the config (fine-tuning a
    pruned model); it must fit the dataset's input channels and classes."""

    def __init__(
        self, cfg: TrainConfig, progress: bool = True, model: torch.nn.Module | None = None
    ) -> None:
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        self.rank, self.world = dist_util.setup(self.device)
        self.progress = progress and self.rank == 0
        self.out = Path(cfg.out)
        torch.manual_seed(cfg.seed)
        self.train_set, self.val_set = build_datasets(cfg, self.progress)
        if model is None:
            model = build_model(cfg, self.train_set.num_classes)
        self.model = model.to(self.device)
        if cfg.deterministic:
            set_deterministic(self.model)
        self.net = self.model
        if self.world > 1:
            # Ranks that timed dataflows separately could pick different ones (and round
            # differently); with tuning off every rank runs the same default, logged once.
            set_autotune(False)
            if self.rank == 0:
                logger.info("DDP: dataflow autotuning off, every rank uses the default dataflow")
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        params = self.model.parameters()
        if cfg.optimizer == "sgd":
            self.opt = torch.optim.SGD(
                params,
                lr=cfg.lr,
                momentum=cfg.momentum,
                weight_decay=cfg.weight_decay,
                nesterov=True,
            )
        else:
            self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = warmup_cosine(
            self.opt, cfg.steps, min(cfg.warmup_steps, cfg.steps), cfg.min_lr_ratio
        )
        self.amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)  # float16 needs scaling
        cpu_bf16 = cfg.cpu_bf16 and self.device.type == "cpu"
        self.autocast_dtype = torch.float16 if self.amp else torch.bfloat16 if cpu_bf16 else None
        self.sampler = sampler = dist_util.ShardedEpochSampler(
            len(self.train_set), self.rank, self.world, cfg.seed
        )
        self.loader = torch.utils.data.DataLoader(
            self.train_set, batch_size=cfg.batch_size, sampler=sampler, collate_fn=datasets.collate,
            num_workers=cfg.num_workers,
        )  # fmt: skip
        self.class_weights = self.make_class_weights()
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.history: list[dict] = []
        self.evals: list[dict] = []

    def make_class_weights(self) -> torch.Tensor | None:
        """``1/sqrt(frequency)`` per class, mean 1 over the classes present (rare classes such
        as people and signs otherwise barely move the loss); absent classes get 0."""
        if self.cfg.class_weights == "none":
            return None
        counts = torch.as_tensor(self.train_set.label_histogram(), dtype=torch.float64)
        w = torch.where(counts > 0, (counts / counts.sum()).rsqrt(), torch.zeros_like(counts))
        w = w / w[counts > 0].mean()
        return w.float().to(self.device)

    # -- checkpoints ----------------------------------------------------------------------
    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "history": self.history, "evals": self.evals, "config": self.cfg.to_dict(),
            "torch_rng": torch.get_rng_state(),
        }  # fmt: skip

    def sync_buffers(self) -> None:
        """BN running statistics are per rank under DDP (it only broadcasts them at the next
        forward); take rank 0's so every rank and every checkpoint holds the same model."""
        if self.world > 1:
            for buf in self.model.buffers():
                torch.distributed.broadcast(buf, 0)

    def save(self) -> None:
        self.sync_buffers()
        if self.rank == 0:
            save_checkpoint(self.ckpt_dir / "last.pt", self.state())
        dist_util.barrier()

    def resume(self) -> bool:
        """Continue from the run folder's last good checkpoint; False when there is none."""
        found = load_latest(self.ckpt_dir, map_location=self.device)
        if found is None:
            return False
        state, _ = found
        saved = {
            k: v
            for k, v in state["config"].items()
            if k not in ("steps", "out", "device", "eval_every", "checkpoint_every", "num_workers")
        }
        mine = {k: v for k, v in self.cfg.to_dict().items() if k in saved}
        if saved != mine:
            diff = sorted(k for k in saved if saved[k] != mine[k])
            raise ValueError(
                f"cannot resume: the checkpoint was trained with different {', '.join(diff)}"
            )
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = (
            state["step"],
            state["epoch"],
            state["batch_in_epoch"],
        )
        self.history, self.evals = state["history"], state["evals"]
        torch.set_rng_state(state["torch_rng"].cpu())
        return True

    # -- training -------------------------------------------------------------------------
    def train_step(self, batch: datasets.Batch) -> float:
        if self.cfg.adaptive_threads and not self.cfg.deterministic:
            with adaptive_threads():
                return self._train_step(batch)
        return self._train_step(batch)

    def _train_step(self, batch: datasets.Batch) -> float:
        batch = batch.to(self.device)
        dtype = self.autocast_dtype
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            logits, labels = training_logits(self.net, batch, self.cfg.voxel_size)
            loss = segmentation_loss(logits, labels, self.cfg.lovasz_weight, self.class_weights)
            if self.cfg.bn_l1:
                loss = loss + bn_l1_penalty(self.model, self.cfg.bn_l1)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        return float(loss.detach())

    def batches(self):
        """Endless (epoch, batch) stream starting at the saved position."""
        while True:
            self.train_set.set_epoch(self.epoch)
            self.sampler.set_epoch(self.epoch, skip=self.batch_in_epoch * self.cfg.batch_size)
            for batch in self.loader:
                self.batch_in_epoch += 1
                yield batch
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def fit(self) -> dict:
        cfg = self.cfg
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        self.net.train()
        t0, recent = time.time(), []
        bar = tqdm(
            total=cfg.steps, initial=self.step, desc="train", unit="step", disable=not self.progress
        )
        stream = self.batches()
        while self.step < cfg.steps:
            loss = self.train_step(next(stream))
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss} at step {self.step}; lower the learning rate"
                )
            self.step += 1
            recent.append(loss)
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self.history.append(
                    {
                        "step": self.step,
                        "loss": float(np.mean(recent)),
                        "lr": self.sched.get_last_lr()[0],
                    }
                )
                bar.set_postfix(loss=f"{self.history[-1]['loss']:.3f}")
                recent = []
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                self.run_eval(final=False)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save()
        bar.close()
        self.save()  # also syncs BN buffers across ranks
        summary = self.run_eval(final=True)
        summary["train_seconds"] = time.time() - t0
        if self.rank == 0:
            write_json(
                self.out / "metrics.json", {**summary, "history": self.history, "evals": self.evals}
            )
        return summary

    def run_eval(self, final: bool) -> dict:
        summary: dict = {}
        if self.rank == 0:
            conf, first = evaluate(
                self.model, self.val_set, self.device, self.progress, keep_first=final
            )
            names = self.val_set.class_names
            self.evals.append({"step": self.step, "miou": 100 * conf.miou()})
            summary = {"step": self.step, "miou_percent": 100 * conf.miou(), "accuracy_percent": 100 * conf.accuracy(),
                       "per_class_iou_percent": conf.per_class(names), "val_scans": len(self.val_set)}  # fmt: skip
            if final:
                (self.out / "per_class_iou.txt").write_text(conf.table(names))
                plot_curves(self.out / "curves.png", self.history, self.evals)
                if first is not None:
                    plot_bev(
                        self.out / "prediction_bev.png",
                        first["xyz"],
                        first["pred"],
                        first["target"],
                        names,
                        datasets.IGNORE_INDEX,
                    )
        dist_util.barrier()
        return summary
