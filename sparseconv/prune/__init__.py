"""Pruning of sparse-conv networks: channel (physically smaller), kernel offsets, N:M and
fine-grained.

```python
graph = sc.prune.DependencyGraph(net, example)        # coupled channels, printable
small = sc.prune.channel_prune(net, example, ratio=0.5, importance="l2")
fewer, report = sc.prune.offset_prune(net, example, ratio=1 / 3, importance="work")
report = sc.prune.nm_prune(net, n=2, m=4)             # masks stay applied while fine-tuning
sc.prune.accelerate_nm(net.half().cuda(), example)   # sparse tensor cores where measurably faster
sc.prune.save(small, "small.npz"); again = sc.prune.load("small.npz")
```
"""

from sparseconv.prune.accelerate import AccelerationReport, accelerate_nm
from sparseconv.prune.amc import AMCResult, amc_search
from sparseconv.prune.channel import channel_prune, resolve_importance, zero_channels
from sparseconv.prune.cost import count_macs
from sparseconv.prune.graph import DependencyGraph
from sparseconv.prune.importance import (
    FPGM,
    SNIP,
    APoZ,
    BNScale,
    GraSP,
    Hessian,
    Importance,
    Magnitude,
    Random,
    Taylor,
    Uniform,
    bn_l1_penalty,
)
from sparseconv.prune.masks import (
    check_nm,
    decompress_nm,
    export_nm,
    fine_grained_prune,
    masked_layers,
    nm_prune,
    remove_mask,
)
from sparseconv.prune.offset import OffsetReport, offset_prune, pattern_offsets, zero_offsets
from sparseconv.prune.reconstruction import Reconstruction
from sparseconv.prune.regularizers import (
    add_l0_gates,
    group_lasso_penalty,
    l0_penalty,
    prune_closed_gates,
)
from sparseconv.prune.schedule import (
    FINETUNE_LR_FACTOR,
    GradualPruner,
    LotteryTicket,
    SoftFilterPruner,
    cubic_sparsity,
    finetune_lr,
    iterative_channel_prune,
)
from sparseconv.prune.search import Sensitivity, netadapt, sensitivity_scan
from sparseconv.prune.serialize import load, save
from sparseconv.prune.shrink import remove_channels
from sparseconv.prune.voxel import stride_counts, voxel_counts, voxel_prune

__all__ = [
    "AccelerationReport",
    "AMCResult",
    "amc_search",
    "accelerate_nm",
    "FINETUNE_LR_FACTOR",
    "GradualPruner",
    "LotteryTicket",
    "SoftFilterPruner",
    "FPGM",
    "GraSP",
    "add_l0_gates",
    "group_lasso_penalty",
    "l0_penalty",
    "prune_closed_gates",
    "Sensitivity",
    "count_macs",
    "cubic_sparsity",
    "finetune_lr",
    "iterative_channel_prune",
    "netadapt",
    "sensitivity_scan",
    "APoZ",
    "BNScale",
    "DependencyGraph",
    "Hessian",
    "Importance",
    "Magnitude",
    "Random",
    "Reconstruction",
    "SNIP",
    "Taylor",
    "Uniform",
    "bn_l1_penalty",
    "channel_prune",
    "check_nm",
    "decompress_nm",
    "export_nm",
    "fine_grained_prune",
    "load",
    "masked_layers",
    "nm_prune",
    "OffsetReport",
    "offset_prune",
    "pattern_offsets",
    "zero_offsets",
    "remove_channels",
    "remove_mask",
    "resolve_importance",
    "save",
    "stride_counts",
    "voxel_counts",
    "voxel_prune",
    "zero_channels",
]
