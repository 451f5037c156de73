"""Slow: a reduced MinkUNet overfits the two real SemanticKITTI 00 scans (the pipeline can learn)."""

import pytest

from sparseconv.train import Trainer, load_config


@pytest.mark.slow
def test_reduced_minkunet_overfits_real_sequence_00(kitti_root, tmp_path):
    cfg = load_config(None, [
        "dataset=semantickitti", f"data_root={kitti_root}", "train_split=train", "val_split=train",
        f"out={tmp_path}", "width=0.25", "voxel_size=0.1", "steps=200", "batch_size=1",
        "optimizer=adamw", "lr=0.01", "warmup_steps=10", "augment=false", "lovasz_weight=1.0",
        "checkpoint_every=0", "device=cpu",
    ])  # fmt: skip
    summary = Trainer(cfg, progress=False).fit()
    # train split present on disk = the two sequence-00 scans; scored on those same scans
    assert summary["val_scans"] == 2
    assert summary["miou_percent"] >= 80.0, summary["per_class_iou_percent"]
