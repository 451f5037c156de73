"""Dependency graph of coupled channels, found by tracing one forward pass.

Why tracing and not ``grad_fn`` walking (Torch-Pruning's way): a sparse network passes
``SparseTensor`` objects between layers, and our convolution is a custom autograd function whose
backward node says nothing about channel layout. Instead every torch call made during one
forward pass is observed through a ``TorchFunctionMode`` and every supported layer through
module hooks, and each feature channel is followed as an *atom*:

- a producer layer (``sparseconv.nn.Conv3d``, ``torch.nn.Linear``) creates one atom per output
  channel; a consumer layer records the atoms of its input channels;
- norms (``BatchNorm``) attach their per-channel parameters to the atoms they see;
- ``torch.cat`` along the channel axis concatenates atom lists (MinkUNet's skips);
- any op whose output keeps the channel (last) axis of an input -- adds of residual branches,
  activations, dropout, gathers and scatters along the point axis (devoxelisation, SPVCNN's point
  branch) -- *unifies* the atoms of its inputs channel by channel (union-find);
- anything else that touches channels (a reshape that moves the channel axis, a transpose, a
  softmax over channels, a parameter used outside a supported layer, a ``GroupNorm``) *blocks*
  the atoms it sees: they are never pruned, so pruning is conservative, never silently wrong.

After the pass, every union-find class of atoms is one prunable channel: removing it removes the
matching output channel of every producer, the norm entries and the input channel of every
consumer in the class. Classes made by the same producers form a *group* (the unit for per-layer
ratios and for printing). Channels of the network input and of its output are blocked.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from sparseconv import nn as snn
from sparseconv.prune.tracing import call_model, name_matches, observed
from sparseconv.tensor import SparseTensor

PRODUCER_TYPES = (snn.Conv3d, nn.Linear)
NORM_TYPES = (nn.BatchNorm1d,)  # sparseconv.nn.BatchNorm subclasses it
# ops that mix or reorder the channel axis even when its length is unchanged
_CHANNEL_MIXING = {
    "softmax", "log_softmax", "layer_norm", "group_norm", "normalize", "cumsum", "cumprod",
    "sort", "argsort", "flip", "roll", "t", "transpose", "transpose_", "permute", "swapaxes",
    "swapdims", "movedim", "matmul", "mm", "bmm", "einsum", "linear", "conv1d", "conv2d",
    "conv3d", "tensordot", "topk", "argmax", "argmin", "__get__", "__matmul__", "unfold",
}  # fmt: skip


@dataclass
class ChannelClass:
    """One prunable channel: the (layer, channel index) pairs that must go together."""

    producers: list[tuple[str, int]] = field(default_factory=list)
    norms: list[tuple[str, int]] = field(default_factory=list)
    consumers: list[tuple[str, int]] = field(default_factory=list)
    activations: list[tuple[str, int]] = field(default_factory=list)
    blocked: bool = False


@dataclass
class Group:
    """Channel classes made by the same producer layers (pruned with one ratio)."""

    producers: tuple[str, ...]
    classes: list[int]
    prunable: bool
    reason: str = ""

    def __len__(self) -> int:
        return len(self.classes)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.blocked: list[bool] = []

    def new(self, n: int, blocked: bool = False) -> list[int]:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.blocked.extend([blocked] * n)
        return list(range(start, start + n))

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            self.blocked[ra] = self.blocked[ra] or self.blocked[rb]

    def block(self, atoms: list[int]) -> None:
        for a in atoms:
            self.blocked[self.find(a)] = True


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, SparseTensor):
        return [obj.feats]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


class _Recorder(TorchFunctionMode):
    """Follows channel atoms through every torch call of one forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.uf = _UnionFind()
        self.atoms: dict[int, list[int]] = {}  # id(tensor) -> atom per channel
        self.keep: list[torch.Tensor] = []  # keeps traced tensors alive so ids stay unique
        self.leaf_depth = 0
        names = {m: n for n, m in model.named_modules()}
        self.names = names
        leaf_params = {
            id(p)
            for m in names
            if isinstance(m, (*PRODUCER_TYPES, *NORM_TYPES))
            for p in m.parameters(recurse=False)
        }
        self.loose_params = {id(p) for p in model.parameters() if id(p) not in leaf_params}
        self.producer_atoms: dict[str, list[int]] = {}
        self.norm_atoms: dict[str, list[int]] = {}
        self.consumer_atoms: dict[str, list[int]] = {}
        self.activation_atoms: dict[str, list[int]] = {}

    # -- atoms of tensors -----------------------------------------------------------------
    def get(self, t: torch.Tensor) -> list[int] | None:
        return self.atoms.get(id(t))

    def set(self, t: torch.Tensor, atoms: list[int]) -> None:
        self.atoms[id(t)] = atoms
        self.keep.append(t)

    def atoms_or_blocked(self, t: torch.Tensor) -> list[int]:
        """Atoms of ``t``; a tensor that no layer produced (the network input) gets blocked ones."""
        a = self.get(t)
        if a is None:
            a = self.uf.new(t.shape[-1] if t.dim() else 0, blocked=True)
            self.set(t, a)
        return a

    def unify(self, a: list[int], b: list[int]) -> None:
        for x, y in zip(a, b):
            self.uf.union(x, y)

    def bind(self, store: dict[str, list[int]], name: str, atoms: list[int]) -> list[int]:
        """First call of a layer records its atoms; later calls (shared layers) unify with them."""
        if name in store:
            self.unify(store[name], atoms)
        else:
            store[name] = list(atoms)
        return store[name]

    # -- torch calls ----------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.leaf_depth == 0:
            self.record(func, args, kwargs, out)
        return out

    def record(self, func, args, kwargs, out) -> None:
        name = getattr(func, "__name__", "")
        inputs = _tensors(args) + _tensors(kwargs)
        known = [t for t in inputs if self.get(t) is not None]
        if name == "__setitem__":
            out = args[0]
        outs = [t for t in _tensors(out) if t.is_floating_point()]
        if not known and not any(id(t) in self.loose_params for t in inputs):
            return
        if name in ("cat", "concat", "concatenate"):
            tensors = args[0] if args else kwargs["tensors"]
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            if tensors and dim in (-1, tensors[0].dim() - 1):
                self.set(outs[0], [a for t in tensors for a in self.atoms_or_blocked(t)])
                return
        if name == "__getitem__" and self._indexes_channels(args):
            name = "transpose"  # treat as channel-mixing
        mixing = name in _CHANNEL_MIXING or any(id(t) in self.loose_params for t in inputs)
        for o in outs:
            self.propagate(o, known, mixing)

    @staticmethod
    def _indexes_channels(args) -> bool:
        t, index = args[0], args[1]
        if not isinstance(index, tuple) or t.dim() < 2:
            return False
        if any(i is Ellipsis for i in index):
            return not (index[-1] is Ellipsis or index[-1] == slice(None))
        return len(index) >= t.dim() and index[t.dim() - 1] != slice(None)

    def propagate(self, out: torch.Tensor, known: list[torch.Tensor], mixing: bool) -> None:
        c_out = out.shape[-1] if out.dim() else -1
        matching = []
        for t in known:
            if t is out:
                continue
            c_in = t.shape[-1] if t.dim() else -1
            if not mixing and c_in == c_out and c_out > 0:
                matching.append(self.get(t))
            elif c_in != 1:
                self.uf.block(self.get(t))
        current = self.get(out)
        if not matching:
            if current is None and c_out > 0:
                self.set(out, self.uf.new(c_out, blocked=True))
            elif current is not None and mixing:
                self.uf.block(current)
            return
        if current is None:
            self.set(out, matching[0])
            current = matching[0]
        for m in matching:
            self.unify(current, m)

    # -- layer hooks ----------------------------------------------------------------------
    def pre_hook(self, module: nn.Module, args) -> None:
        if self.leaf_depth == 0:
            name = self.names[module]
            x = args[0]
            feats = x.feats if isinstance(x, SparseTensor) else x
            if isinstance(module, PRODUCER_TYPES):
                self.bind(self.consumer_atoms, name, self.atoms_or_blocked(feats))
            elif isinstance(module, NORM_TYPES) and feats.dim() == 2:
                self.bind(self.norm_atoms, name, self.atoms_or_blocked(feats))
            else:  # an unsupported layer with parameters: its channels stay as they are
                for t in _tensors(args):
                    if self.get(t) is not None:
                        self.uf.block(self.get(t))
        self.leaf_depth += 1

    def hook(self, module: nn.Module, args, out) -> None:
        self.leaf_depth -= 1
        if self.leaf_depth:
            return
        name = self.names[module]
        feats = out.feats if isinstance(out, SparseTensor) else out
        if isinstance(module, PRODUCER_TYPES):
            if name not in self.producer_atoms:
                self.producer_atoms[name] = self.uf.new(feats.shape[-1])
            self.set(feats, self.producer_atoms[name])
        elif isinstance(module, NORM_TYPES) and name in self.norm_atoms:
            self.set(feats, self.norm_atoms[name])
        else:
            for t in _tensors(out):
                self.set(t, self.uf.new(t.shape[-1] if t.dim() else 0, blocked=True))

    def activation_hook(self, module: nn.Module, args, out) -> None:
        feats = out.feats if isinstance(out, SparseTensor) else out
        if self.leaf_depth == 0 and self.get(feats) is not None:
            self.bind(self.activation_atoms, self.names[module], self.get(feats))


def _is_leaf(m: nn.Module) -> bool:
    return isinstance(m, (*PRODUCER_TYPES, *NORM_TYPES)) or any(
        True for _ in m.parameters(recurse=False)
    )


class DependencyGraph:
    """Channel classes and groups of a network, from one traced forward pass on ``example``.

    ``example`` is what the model's ``forward`` takes: one ``SparseTensor``, a tuple of
    positional arguments (SPVCNN: ``(x, points, voxel_size)``) or a dict of keyword arguments.
    """

    def __init__(self, model: nn.Module, example) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        rec = _Recorder(model)
        handles = []
        for m in model.modules():
            if _is_leaf(m):
                handles.append(m.register_forward_pre_hook(rec.pre_hook))
                handles.append(m.register_forward_hook(rec.hook))
            elif isinstance(m, (nn.ReLU, snn.ReLU)):
                handles.append(m.register_forward_hook(rec.activation_hook))
        try:
            with observed(model, handles), rec:
                out = call_model(model, example)
        except (RuntimeError, ValueError, TypeError) as e:
            raise ValueError(f"tracing the model on example_input failed: {e}") from e
        for t in _tensors(out):  # the network's outputs keep their channels
            if rec.get(t) is not None:
                rec.uf.block(rec.get(t))
        self._build(rec)

    def _build(self, rec: _Recorder) -> None:
        uf = rec.uf
        index: dict[int, int] = {}
        self.classes: list[ChannelClass] = []

        def cls(atom: int) -> ChannelClass:
            root = uf.find(atom)
            if root not in index:
                index[root] = len(self.classes)
                self.classes.append(ChannelClass(blocked=uf.blocked[root]))
            return self.classes[index[root]]

        for kind, store in (
            ("producers", rec.producer_atoms),
            ("norms", rec.norm_atoms),
            ("consumers", rec.consumer_atoms),
            ("activations", rec.activation_atoms),
        ):
            for name, atoms in store.items():
                for pos, a in enumerate(atoms):
                    getattr(cls(a), kind).append((name, pos))
        self.layer_classes = {
            kind: {name: [index[uf.find(a)] for a in atoms] for name, atoms in store.items()}
            for kind, store in (
                ("producers", rec.producer_atoms),
                ("norms", rec.norm_atoms),
                ("consumers", rec.consumer_atoms),
                ("activations", rec.activation_atoms),
            )
        }
        by_producers: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for i, c in enumerate(self.classes):
            if c.producers:
                by_producers[tuple(sorted({n for n, _ in c.producers}))].append(i)
        self.groups: list[Group] = []
        for producers, classes in by_producers.items():
            blocked = any(self.classes[i].blocked for i in classes)
            self.groups.append(
                Group(
                    producers,
                    classes,
                    not blocked,
                    "feeds the output or an op that mixes channels" if blocked else "",
                )
            )

    ignore: tuple[str, ...] = ()

    def prunable_groups(self, ignore: tuple[str, ...] | None = None) -> list[Group]:
        """Groups whose channels may be removed; ``ignore`` lists layer names (or prefixes) whose
        output channels stay (default: ``self.ignore``, set by ``channel_prune``)."""
        ignore = self.ignore if ignore is None else ignore

        def ignored(name: str) -> bool:
            return name_matches(name, ignore)

        return [g for g in self.groups if g.prunable and not any(ignored(p) for p in g.producers)]

    def __str__(self) -> str:
        lines = [f"DependencyGraph: {len(self.groups)} groups, {len(self.classes)} channels"]
        for i, g in enumerate(self.groups):
            c = self.classes[g.classes[0]]
            state = "prunable" if g.prunable else f"fixed ({g.reason})"
            lines.append(f"  group {i}: {len(g)} channels, {state}")
            lines.append(f"    out of:  {', '.join(g.producers)}")
            norms = sorted({n for n, _ in c.norms})
            if norms:
                lines.append(f"    norms:   {', '.join(norms)}")
            lines.append(f"    into:    {', '.join(sorted({n for n, _ in c.consumers})) or '-'}")
        return "\n".join(lines)
