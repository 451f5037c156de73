"""The trainer end to end on a tiny dataset: run folder, resume, eval CLI, DDP with gloo."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparseconv.cli import main
from sparseconv.train import Trainer, load_config

TINY = ["dataset=semantickitti", "width=0.125", "voxel_size=0.5", "batch_size=1", "optimizer=adamw",
        "lr=0.01", "warmup_steps=1", "log_every=1", "device=cpu"]  # fmt: skip


def _cfg(root, out, *extra):
    return load_config(None, [*TINY, f"data_root={root}", f"out={out}", *extra])


def test_run_folder_contents(tiny_kitti, tmp_path):
    out = tmp_path / "run"
    summary = Trainer(_cfg(tiny_kitti, out, "steps=4", "lovasz_weight=0.5"), progress=False).fit()
    # 4 steps learn little, but the score is the confusion matrix's: recompute it from the files
    per_class = (out / "per_class_iou.txt").read_text()
    assert summary["miou_percent"] > 0 and f"{summary['miou_percent']:.1f}" in per_class
    for name in (
        "config.yaml",
        "metrics.json",
        "per_class_iou.txt",
        "curves.png",
        "prediction_bev.png",
    ):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 4 and metrics["evals"][-1]["step"] == 4


class _Crash(Trainer):
    def train_step(self, batch):
        if self.step == 3:
            raise KeyboardInterrupt
        return super().train_step(batch)


def test_resume_continues_the_same_run(tiny_kitti, tmp_path):
    straight = Trainer(
        _cfg(tiny_kitti, tmp_path / "a", "steps=6", "checkpoint_every=3"), progress=False
    )
    straight.fit()
    cfg = _cfg(tiny_kitti, tmp_path / "b", "steps=6", "checkpoint_every=3")
    with pytest.raises(KeyboardInterrupt):
        _Crash(cfg, progress=False).fit()
    resumed = Trainer(cfg, progress=False)
    assert resumed.resume() and resumed.step == 3
    resumed.fit()
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    with pytest.raises(ValueError, match="different width"):
        Trainer(_cfg(tiny_kitti, tmp_path / "b", "steps=6", "width=0.25"), progress=False).resume()


def test_cli_train_eval_and_bad_key(tiny_kitti, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "\n".join(s.replace("=", ": ") for s in TINY) + f"\ndata_root: {tiny_kitti}\nsteps: 2\n"
    )
    assert main(["train", "--config", str(cfg), f"out={out}"]) == 0
    assert main(["eval", "--checkpoint", str(out / "checkpoints" / "last.pt")]) == 0
    assert "mIoU" in capsys.readouterr().out
    assert json.loads((out / "eval.json").read_text())["split"] == "val"
    with pytest.raises(ValueError, match="unknown config key 'stepz'"):
        main(["train", "--config", str(cfg), "stepz=3"])


def test_ddp_two_gloo_processes_end_with_identical_weights(tiny_kitti, tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(worker), str(tiny_kitti), str(tmp_path / "ddp")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(tmp_path / "ddp" / "rank0.pt")
    b = torch.load(tmp_path / "ddp" / "rank1.pt")
    start = Trainer(
        _cfg(tiny_kitti, tmp_path / "fresh", "steps=1"), progress=False
    ).model.state_dict()
    assert any(not torch.equal(a[k], start[k]) for k in a)  # it trained
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_class_weights_from_the_label_histogram(tiny_kitti, tmp_path):
    tr = Trainer(
        _cfg(tiny_kitti, tmp_path / "w", "steps=1", "class_weights=sqrt_inv"), progress=False
    )
    hist = tr.train_set.label_histogram()
    car, road = tr.train_set.class_names.index("car"), tr.train_set.class_names.index("road")
    assert hist[road] == 2 * hist[car] and hist.sum() == hist[car] + hist[road]
    w = tr.class_weights
    assert torch.isclose(w[car] / w[road], torch.tensor(2.0).sqrt()) and w.count_nonzero() == 2
    with pytest.raises(ValueError, match="class_weights"):
        _cfg(tiny_kitti, tmp_path / "w", "class_weights=inverse")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_asking_for_cuda_without_it_is_a_clear_error():
    from sparseconv.train.trainer import pick_device

    assert pick_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="no CUDA device"):
        pick_device("cuda")


@pytest.mark.parametrize("threads", [1, 2])
def test_deterministic_training_repeats_bit_for_bit(tiny_kitti, tmp_path, threads):
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runs = []
        for name in ("a", "b"):
            cfg = _cfg(
                tiny_kitti, tmp_path / name, "steps=4", "deterministic=true", "augment=false"
            )
            trainer = Trainer(cfg, progress=False)
            trainer.fit()
            runs.append(trainer)
    finally:
        torch.set_num_threads(saved)
    a, b = runs
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    for (k, wa), wb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(wa, wb), k


def test_cpu_bf16_trains_the_convs_in_bfloat16_with_float32_weights(
    tiny_kitti, tmp_path, monkeypatch
):
    from sparseconv.functional import dataflow_cpu

    seen = []
    forward = dataflow_cpu.fused_forward
    monkeypatch.setattr(
        dataflow_cpu, "fused_forward", lambda x, *a: seen.append(x.dtype) or forward(x, *a)
    )
    trainer = Trainer(_cfg(tiny_kitti, tmp_path / "bf", "steps=3", "cpu_bf16=true"), progress=False)
    summary = trainer.fit()
    assert torch.bfloat16 in seen  # the training steps' convs
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.history)
    assert summary["miou_percent"] >= 0
