"""``torchsparse.utils.collate``: batches of dicts holding sparse tensors, arrays and tensors."""

from __future__ import annotations

import numpy as np
import torch

from sparseconv.compat.torchsparse.tensor import SparseTensor


def sparse_collate(inputs: list[SparseTensor]) -> SparseTensor:
    """One tensor from single samples: each sample's rows get its batch index in front."""
    if not inputs:
        raise ValueError("sparse_collate needs at least one tensor")
    for k, x in enumerate(inputs):
        if x.batched:
            raise ValueError(
                f"sample {k} already has a batch column ([N, 4] coords); sparse_collate takes "
                "[N, 3] single-sample tensors"
            )
        if x.stride != inputs[0].stride:
            raise ValueError(f"sample {k} has stride {x.stride}, sample 0 {inputs[0].stride}")
    coords = torch.cat(
        [
            torch.cat([torch.full((len(x.C), 1), k, dtype=torch.int32), x.C.cpu()], 1).to(
                x.C.device
            )
            for k, x in enumerate(inputs)
        ]  # fmt: skip
    )
    feats = torch.cat([x.F for x in inputs])
    return SparseTensor(feats, coords, inputs[0].stride)


def sparse_collate_fn(inputs):
    """``DataLoader(collate_fn=sparse_collate_fn)``: per key, sparse tensors collated, arrays
    and tensors stacked, nested dicts recursed, anything else gathered into a list."""
    if not isinstance(inputs[0], dict):
        return inputs
    output = {}
    for name, first in inputs[0].items():
        values = [sample[name] for sample in inputs]
        if isinstance(first, dict):
            output[name] = sparse_collate_fn(values)
        elif isinstance(first, SparseTensor):
            output[name] = sparse_collate(values)
        elif isinstance(first, np.ndarray):
            output[name] = torch.stack([torch.as_tensor(v) for v in values])
        elif isinstance(first, torch.Tensor):
            output[name] = torch.stack(values)
        else:
            output[name] = values
    return output
