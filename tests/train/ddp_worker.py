"""Run by ``torchrun --nproc_per_node 2`` from test_trainer.py: train, then dump this rank's weights."""

import sys
from pathlib import Path

import torch

from sparseconv.train import Trainer, load_config

root, out = sys.argv[1], Path(sys.argv[2])
cfg = load_config(None, [f"data_root={root}", f"out={out}", "dataset=semantickitti", "width=0.125",
                         "voxel_size=0.5", "steps=4", "batch_size=1", "checkpoint_every=0",
                         "optimizer=adamw", "lr=0.01", "warmup_steps=0", "device=cpu"])  # fmt: skip
trainer = Trainer(cfg, progress=False)
trainer.fit()
torch.save(trainer.model.state_dict(), out / f"rank{trainer.rank}.pt")
