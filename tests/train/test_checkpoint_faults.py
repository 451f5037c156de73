"""A full disk while a checkpoint is written: a clear error, the previous checkpoint intact."""

import errno
import shutil
import subprocess

import pytest
import torch

from sparseconv.train import checkpoint
from sparseconv.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _state(n: int) -> dict:
    return {"step": n, "weights": torch.arange(n, dtype=torch.float32)}


def test_a_failing_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state(10))
    real_open = open

    class FullDisk:
        def __init__(self, *args):
            self.file = real_open(*args)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            self.file.write(data[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "open", FullDisk, raising=False)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint"):
        save_checkpoint(path, _state(20))
    assert load_checkpoint(path)["step"] == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no partial file left


def test_a_real_full_tmpfs(tmp_path):
    """The same on a 64 KiB tmpfs (needs root and mount; skipped where not permitted)."""
    mount = shutil.which("mount")
    target = tmp_path / "small"
    target.mkdir()
    if mount is None:
        pytest.skip("no mount command")
    done = subprocess.run([mount, "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(target)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        path = target / "last.pt"
        save_checkpoint(path, _state(100))  # ~1 KB: fits
        with pytest.raises(CheckpointError, match="previous checkpoint is unchanged"):
            save_checkpoint(path, _state(100_000))  # ~400 KB: does not
        assert load_checkpoint(path)["step"] == 100
        assert [p.name for p in target.iterdir()] == ["last.pt"]
    finally:
        subprocess.run(["umount", str(target)], capture_output=True)
