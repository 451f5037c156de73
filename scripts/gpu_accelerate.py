"""2:4 MinkUNet on a GPU: which layers PyTorch's semi-structured sparse GEMM speeds up.

    python scripts/gpu_accelerate.py SCAN.bin

Prunes a width-1.0 MinkUNet to 2:4 (magnitude), runs ``sparseconv.prune.accelerate_nm`` on the
real scan in float16, prints its per-layer report, then the whole network's latency with the
dense kernels and with the chosen sparse layers, interleaved in the same run.
"""

from __future__ import annotations

import copy
import sys

import numpy as np
import torch

import sparseconv as sc
from sparseconv.models import MinkUNet
from sparseconv.utils.timing import interleaved, median, ratio


def main() -> None:
    pts = torch.from_numpy(np.fromfile(sys.argv[1], dtype=np.float32).reshape(-1, 4))
    x, _ = sc.voxelize(pts[:, :3], 0.05, features=pts)
    x = x.to("cuda")
    x = x.replace_feats(x.feats.half())
    net = MinkUNet(4, 19, width=1.0).half().cuda().eval()
    print(sc.prune.nm_prune(net, 2, 4))
    dense_net = copy.deepcopy(net)
    report = sc.prune.accelerate_nm(net, x, rounds=10)
    print(report)
    chosen = [m for m in net.modules() if isinstance(m, sc.nn.SemiStructuredConv3d)]

    def run(sparse: bool):
        with torch.no_grad():
            return (net if sparse else dense_net)(x)

    t = interleaved({"dense": lambda: run(False), "sparse": lambda: run(True)}, 10, device="cuda")
    print(
        f"MinkUNet w1.0 fp16, {len(x)} voxels: dense {median(t['dense']) * 1e3:.2f} ms, "
        f"with {len(chosen)} sparse layers {median(t['sparse']) * 1e3:.2f} ms "
        f"({ratio(t, 'sparse', 'dense'):.2f}x)"
    )


if __name__ == "__main__":
    main()
