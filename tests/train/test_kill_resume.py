"""Fault injection: SIGKILL the trainer at random moments, resume, lose nothing complete (slow)."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparseconv.train.checkpoint import load_latest

STEPS, EVERY = 300, 5


def _train(out: Path, resume: bool) -> subprocess.Popen:
    args = [sys.executable, "-m", "sparseconv.cli", "train"]
    if resume:
        args += ["--config", str(out / "config.yaml"), "--resume"]
    else:
        args += [
            "dataset=synthetic", "synth_train_scans=2", "synth_val_scans=1", "width=0.125",
            "voxel_size=0.2", f"steps={STEPS}", f"checkpoint_every={EVERY}", "log_every=5",
            "batch_size=1", "optimizer=adamw", "lr=0.01", "warmup_steps=0", f"out={out}",
        ]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_at_random_points_loses_at_most_one_checkpoint_interval(tmp_path):
    out = tmp_path / "run"
    rng = random.Random(0)
    last_step, trials, resumed = -1, 0, 0
    while trials < 10:
        started = (out / "checkpoints" / "last.pt").exists() or (
            out / "checkpoints" / "previous.pt"
        ).exists()
        proc = _train(out, resume=started)
        resumed += started
        time.sleep(rng.uniform(2.0, 5.0))  # imports, data synthesis, training, checkpointing
        if proc.poll() is not None:  # finished (or failed) before the kill
            assert proc.returncode == 0, proc.stderr.read()
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        trials += 1
        found = load_latest(out / "checkpoints")  # never a half-written file
        if found is not None:
            state, _ = found
            assert state["step"] % EVERY == 0 or state["step"] == STEPS
            assert state["step"] >= last_step  # progress is never lost
            last_step = state["step"]
    final = _train(out, resume=True)
    assert final.wait(timeout=600) == 0, final.stderr.read()
    metrics = json.loads((out / "metrics.json").read_text())  # valid JSON
    assert metrics["history"][-1]["step"] == STEPS
    assert trials >= 5 and resumed >= 3, (trials, resumed)
