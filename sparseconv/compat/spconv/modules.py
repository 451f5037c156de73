"""spconv's containers and helpers: ``SparseModule``, ``SparseSequential``, ``ToDense``."""

from __future__ import annotations

import enum
from collections import OrderedDict

from torch import nn

from sparseconv.compat.spconv.tensor import SparseConvTensor


class ConvAlgo(enum.Enum):
    """spconv's algorithm names; accepted everywhere spconv takes ``algo`` and not used
    (sparseconv picks its dataflow itself, see ``sparseconv.functional.DATAFLOWS``)."""

    Native = 0
    MaskImplicitGemm = 1
    MaskSplitImplicitGemm = 2


class SparseModule(nn.Module):
    """Marks a module that takes a ``SparseConvTensor`` (``SparseSequential`` hands every other
    module the features only)."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__()
        self._sparse_unique_name = name or ""


def is_spconv_module(module: nn.Module) -> bool:
    return isinstance(module, SparseModule)


class SparseSequential(SparseModule):
    """``nn.Sequential`` for sparse tensors: modules, an ``OrderedDict`` or keyword modules."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            for key, module in args[0].items():
                self.add_module(key, module)
        else:
            for idx, module in enumerate(args):
                self.add_module(str(idx), module)
        for name, module in kwargs.items():
            if name in self._modules:
                raise ValueError(f"SparseSequential got module name {name!r} twice")
            self.add_module(name, module)

    def __getitem__(self, idx):
        modules = list(self._modules.values())
        if isinstance(idx, slice):
            return SparseSequential(*modules[idx])
        return modules[idx]

    def __len__(self) -> int:
        return len(self._modules)

    def add(self, module: nn.Module, name: str | None = None) -> None:
        name = str(len(self._modules)) if name is None else name
        if name in self._modules:
            raise KeyError(f"SparseSequential already has a module named {name!r}")
        self.add_module(name, module)

    def forward(self, input):
        for module in self._modules.values():
            if is_spconv_module(module):
                input = module(input)
            elif isinstance(input, SparseConvTensor):
                if input.features.shape[0] != 0:  # spconv skips dense modules on no voxels
                    input = input.replace_feature(module(input.features))
            else:
                input = module(input)
        return input


class ToDense(SparseModule):
    """``SparseConvTensor`` to a dense ``[B, C, *spatial_shape]`` tensor."""

    def __init__(self, channels_first: bool = True, name: str | None = None) -> None:
        super().__init__(name)
        self.channels_first = channels_first

    def forward(self, x: SparseConvTensor):
        return x.dense(self.channels_first)


class RemoveGrid(SparseModule):
    """spconv's ``RemoveGrid``: a no-op here (sparseconv keeps no dense grid)."""

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        return x


class SparseReLU(SparseModule, nn.ReLU):
    """``nn.ReLU`` applied to the features."""

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        return x.replace_feature(nn.ReLU.forward(self, x.features))


class SparseBatchNorm(SparseModule, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` applied to the features."""

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        return x.replace_feature(nn.BatchNorm1d.forward(self, x.features))
