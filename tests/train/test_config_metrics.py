"""Config parsing, metrics, losses and checkpoints."""

import pytest
import torch

from sparseconv.train import (
    CheckpointError,
    ConfusionMatrix,
    load_checkpoint,
    load_config,
    lovasz_softmax,
    save_checkpoint,
)
from sparseconv.train.checkpoint import load_latest
from sparseconv.train.schedule import warmup_cosine


def test_config_file_and_overrides(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("model: spvcnn\nlr: 0.01\nsteps: 50\n")
    cfg = load_config(f, ["steps=70", "max_voxels=1000", "blocks=[2,3,4,6,2,2,2,2]"])
    assert (cfg.model, cfg.lr, cfg.steps, cfg.max_voxels) == ("spvcnn", 0.01, 70, 1000)
    assert cfg.blocks == [2, 3, 4, 6, 2, 2, 2, 2]


def test_config_errors_name_the_key(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("lerning_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown config key 'lerning_rate'.*run.yaml"):
        load_config(f)
    with pytest.raises(ValueError, match="'steps' must be an integer"):
        load_config(None, ["steps=ten"])
    with pytest.raises(ValueError, match="'model'"):
        load_config(None, ["model=pointnet"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["steps"])
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_confusion_iou_known_answer():
    cm = ConfusionMatrix(3)
    target = torch.tensor([0, 0, 1, 1, 2, 255])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    cm.update(pred, target)
    # class 0: tp 1, fp 1, fn 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 0, fn 1 -> 0
    torch.testing.assert_close(cm.iou(), torch.tensor([1 / 3, 2 / 3, 0.0], dtype=torch.float64))
    assert abs(cm.miou() - 1 / 3) < 1e-12
    assert "mIoU" in cm.table(("a", "b", "c"))


def test_lovasz_zero_for_perfect_and_positive_otherwise():
    labels = torch.tensor([0, 1, 2, 1])
    perfect = torch.nn.functional.one_hot(labels, 3).float() * 100
    assert float(lovasz_softmax(perfect, labels)) < 1e-6
    logits = torch.randn(4, 3, requires_grad=True)
    loss = lovasz_softmax(logits, labels)
    loss.backward()
    assert float(loss.detach()) > 0 and logits.grad.abs().sum() > 0


def test_warmup_cosine_shape():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = warmup_cosine(opt, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert (
        lrs[0] == 0.5
        and lrs[1] == 1.0
        and lrs[-1] < 0.05
        and lrs == sorted(lrs[:2]) + sorted(lrs[2:], reverse=True)
    )


def test_checkpoint_atomic_and_corruption_refused(tmp_path):
    d = tmp_path / "ckpt"
    save_checkpoint(d / "last.pt", {"step": 1, "w": torch.ones(3)})
    save_checkpoint(d / "last.pt", {"step": 2, "w": torch.ones(3) * 2})
    assert load_checkpoint(d / "last.pt")["step"] == 2
    assert load_checkpoint(d / "previous.pt")["step"] == 1
    raw = bytearray((d / "last.pt").read_bytes())
    raw[-10] ^= 0xFF
    (d / "last.pt").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(d / "last.pt")
    with pytest.warns(UserWarning, match="previous.pt"):
        state, path = load_latest(d)
    assert state["step"] == 1 and path.name == "previous.pt"
    (d / "junk.pt").write_bytes(b"hello")
    with pytest.raises(CheckpointError, match="not a sparseconv checkpoint"):
        load_checkpoint(d / "junk.pt")
    assert not list(d.glob(".*tmp*"))
