"""``sparseconv bench net``: whole networks per scan, the figure a user sees.

For every input (the real scans, synthetic scans of the given sizes) and network (MinkUNet at
width 0.5 and 1.0, SPVCNN), in one interleaved run:

* inference with the maps built on every call (a new ``SparseTensor`` per call: what one new
  scan costs, coordinate checks included), inference with the maps cached, and one training
  step (forward, cross-entropy, backward, AdamW);
* sparseconv at each thread count asked for (CPU), and the spconv twin of MinkUNet with the same
  weights (:mod:`sparseconv.bench.spconv_twin`), single-threaded on CPU (its only correct
  setting; its CPU build cannot run backward, so CPU training has no peer, and it runs float32
  only, so on CPU every dtype of ours is compared with its float32 twin); outputs (largest
  relative difference, fraction of voxels given the same class) are compared before anything
  is timed;
* a breakdown of sparseconv's per-call inference and training step into map building,
  convolution kernels and everything else (:mod:`sparseconv.bench.breakdown`);
* optionally ``torch.compile`` of the network, and ``background_load`` busy processes beside
  every contender.

Ratios are medians of per-round ratios (:mod:`sparseconv.utils.timing`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import sparseconv as sc
from sparseconv.bench import breakdown, inputs, load, peers
from sparseconv.models import SPVCNN, MinkUNet
from sparseconv.utils.optional import pyplot
from sparseconv.utils.progress import progress_bar
from sparseconv.utils.timing import Threads, interleaved, median, ratio

VOXEL_SIZE = 0.05
IN_CHANNELS, NUM_CLASSES = 4, 19
NETWORKS: dict[str, Callable[[], torch.nn.Module]] = {
    "minkunet-w0.5": lambda: MinkUNet(IN_CHANNELS, NUM_CLASSES, width=0.5),
    "minkunet-w1.0": lambda: MinkUNet(IN_CHANNELS, NUM_CLASSES, width=1.0),
    "spvcnn-w0.5": lambda: SPVCNN(IN_CHANNELS, NUM_CLASSES, width=0.5),
}
DEFAULT_NETWORKS = tuple(NETWORKS)
DEFAULT_SIZES = (10_000, 100_000)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# spconv's CPU build runs float32 only (bfloat16 raises KeyError in its kernels, float16 takes
# minutes per scan), so on CPU every dtype of ours is compared with its float32 twin, built from
# our weights in that dtype (bf16 weights widen exactly): the error column then measures our
# arithmetic alone
TWIN_CPU_DTYPE = torch.float32


@dataclass
class Scan:
    """One input: voxel coordinates, features, labels and (for SPVCNN) the voxel centres."""

    name: str
    coords: torch.Tensor
    feats: torch.Tensor
    labels: torch.Tensor
    points: torch.Tensor

    @classmethod
    def from_coords(cls, name: str, coords: torch.Tensor, seed: int = 0) -> Scan:
        g = torch.Generator().manual_seed(seed)
        feats = torch.randn(len(coords), IN_CHANNELS, generator=g)
        labels = torch.randint(0, NUM_CLASSES, (len(coords),), generator=g)
        centres = (coords[:, 1:].float() + 0.5) * VOXEL_SIZE
        points = torch.cat([coords[:, :1].float(), centres], 1)
        return cls(name, coords, feats, labels, points)

    def to(self, device: str, dtype: torch.dtype) -> Scan:
        return Scan(self.name, self.coords.to(device), self.feats.to(device, dtype),
                    self.labels.to(device), self.points.to(device, dtype))  # fmt: skip


def scans(data_dir: Path | None, sizes: tuple[int, ...]) -> list[Scan]:
    found = [
        Scan.from_coords(name, inputs.load_scan_coords(path, VOXEL_SIZE))
        for name, path in inputs.real_scans(data_dir).items()
    ]
    found += [
        Scan.from_coords(f"synthetic-{n // 1000}k", inputs.synthetic_coords(n)) for n in sizes
    ]
    return found


def _call(net: torch.nn.Module, scan: Scan, x: sc.SparseTensor, point_based: bool) -> torch.Tensor:
    """One forward pass; SPVCNN also takes the points (here: the voxel centres)."""
    return net(x, scan.points, VOXEL_SIZE) if point_based else net(x)


class Contenders:
    """The callables of one (input, network, dtype) cell, built once, timed interleaved."""

    def __init__(self, name: str, scan: Scan, device: str, dtype: torch.dtype) -> None:
        torch.manual_seed(0)
        self.scan = scan
        self.device = device
        self.net = NETWORKS[name]().to(device, dtype).eval()
        self.point_based = isinstance(self.net, SPVCNN)
        self.train_net = copy.deepcopy(self.net).train()
        self.optimizer = torch.optim.AdamW(self.train_net.parameters(), lr=1e-4)
        self.cached_input = self.fresh_input()
        self.twin = None
        is_minkunet = isinstance(self.net, MinkUNet) and not self.point_based
        if is_minkunet and peers.spconv_available():
            self.twin = self._build_twin(TWIN_CPU_DTYPE if device == "cpu" else dtype)

    def fresh_input(self) -> sc.SparseTensor:
        return sc.SparseTensor(self.scan.feats, self.scan.coords)

    def infer(self, x: sc.SparseTensor) -> torch.Tensor:
        with torch.no_grad():
            return _call(self.net, self.scan, x, self.point_based)

    def train_step(self) -> None:
        logits = _call(self.train_net, self.scan, self.fresh_input(), self.point_based)
        loss = torch.nn.functional.cross_entropy(logits.float(), self.scan.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def _build_twin(self, dtype: torch.dtype):
        from sparseconv.bench.spconv_twin import SpconvMinkUNet, twin_input

        twin = SpconvMinkUNet(self.net, native_algo=self.device == "cpu").to(self.device, dtype)
        twin.eval()
        self.twin_input = lambda: twin_input(self.scan.coords, self.scan.feats.to(dtype))
        if self.device != "cpu":  # spconv's CPU build cannot run backward: no training twin
            self.twin_train = copy.deepcopy(twin).train()
            self.twin_optimizer = torch.optim.AdamW(self.twin_train.parameters(), lr=1e-4)
        return twin

    def twin_infer(self) -> torch.Tensor:
        with torch.no_grad():
            return self.twin(self.twin_input())

    def twin_train_step(self) -> None:
        logits = self.twin_train(self.twin_input())
        loss = torch.nn.functional.cross_entropy(logits.float(), self.scan.labels)
        self.twin_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.twin_optimizer.step()


def _max_rel_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    ours, theirs = ours.double().cpu(), theirs.double().cpu()
    return float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-12))


def _label_agreement(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """The fraction of voxels given the same class (what a segmentation user sees)."""
    if len(ours) == 0:
        return 1.0
    return float((ours.argmax(1).cpu() == theirs.argmax(1).cpu()).float().mean())


def _on_cpu(threads: int | None, fn: Callable[[], object]) -> Callable[[], object]:
    if threads is None:
        return fn

    def run():
        with Threads(threads):
            return fn()

    return run


def _contenders(cell: Contenders, threads: tuple[int | None, ...], compiled) -> dict:
    timed: dict[str, Callable[[], object]] = {}
    for t in threads:
        tag = _tag(t)
        timed[f"e2e_{tag}"] = _on_cpu(t, lambda: cell.infer(cell.fresh_input()))
        timed[f"cached_{tag}"] = _on_cpu(t, lambda: cell.infer(cell.cached_input))
        timed[f"train_{tag}"] = _on_cpu(t, cell.train_step)
    if compiled is not None:
        t = threads[-1]
        timed["compiled_e2e"] = _on_cpu(t, lambda: compiled(cell.fresh_input()))
    if cell.twin is not None:
        cpu = cell.device == "cpu"
        timed["spconv_e2e"] = _on_cpu(1 if cpu else None, cell.twin_infer)
        if not cpu:  # spconv's CPU build cannot run backward
            timed["spconv_train"] = cell.twin_train_step
    return timed


def _compiled(cell: Contenders) -> tuple[Callable | None, str]:
    try:
        compiled = torch.compile(cell.net, dynamic=True)

        def run(x):
            with torch.no_grad():
                return _call(compiled, cell.scan, x, cell.point_based)

        cell.compiled_error = _max_rel_error(
            run(cell.fresh_input()), cell.infer(cell.fresh_input())
        )
        return run, ""
    except Exception as err:  # noqa: BLE001  (reported, not hidden: the row says why)
        return None, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"


def measure_cell(
    name: str,
    scan: Scan,
    device: str,
    dtype: torch.dtype,
    threads: tuple[int | None, ...],
    rounds: int,
    compile_net: bool,
) -> dict:
    cell = Contenders(name, scan.to(device, dtype), device, dtype)
    row: dict = {"input": scan.name, "voxels": len(scan.coords), "network": name,
                 "dtype": str(dtype).removeprefix("torch.")}  # fmt: skip
    reference = cell.infer(cell.fresh_input())
    if cell.twin is not None:
        theirs = _on_cpu(1 if device == "cpu" else None, cell.twin_infer)()
        row["max_rel_err_vs_spconv"] = _max_rel_error(reference, theirs)
        row["label_agreement_vs_spconv"] = _label_agreement(reference, theirs)
    compiled = None
    if compile_net:
        compiled, reason = _compiled(cell)
        if reason:
            row["compile_error"] = reason
        else:
            row["compiled_max_rel_err_vs_eager"] = cell.compiled_error
    times = interleaved(_contenders(cell, threads, compiled), rounds=rounds, device=device)
    row.update({f"{k}_ms": median(v) * 1e3 for k, v in times.items()})
    for k in times:
        if "spconv_e2e" in times and k.startswith(("e2e_", "cached_", "compiled")):
            row[f"{k}_vs_spconv"] = ratio(times, k, "spconv_e2e")
        if "spconv_train" in times and k.startswith("train_"):
            row[f"{k}_vs_spconv"] = ratio(times, k, "spconv_train")
    if compiled is not None:
        row["compiled_vs_eager"] = ratio(times, "compiled_e2e", f"e2e_{_tag(threads[-1])}")
    _add_breakdown(row, cell, threads[-1])
    return row


def _tag(t: int | None) -> str:
    return f"{t}t" if t else "gpu"


def _add_breakdown(row: dict, cell: Contenders, threads: int | None) -> None:
    for label, fn in (("e2e", lambda: cell.infer(cell.fresh_input())), ("train", cell.train_step)):
        split = breakdown.measure(_on_cpu(threads, fn), cell.device)
        for part in ("maps", "conv", "other"):
            row[f"{label}_{part}_ms"] = split[part] * 1e3


def run(
    device: str = "cpu",
    networks: tuple[str, ...] = DEFAULT_NETWORKS,
    sizes: tuple[int, ...] = DEFAULT_SIZES,
    rounds: int = 5,
    data_dir: Path | None = None,
    dtypes: tuple[str, ...] | None = None,
    threads: tuple[int, ...] = (1, 2),
    background: int = 0,
    compile_net: bool = False,
    progress: bool = True,
    float32_matmul_precision: str | None = None,
) -> dict:
    """Rows of :func:`measure_cell` for every input, network and dtype; see the module doc.
    ``float32_matmul_precision`` is set with ``torch.set_float32_matmul_precision`` for the
    whole run, every contender alike (restored after)."""
    unknown = [n for n in networks if n not in NETWORKS]
    if unknown:
        raise ValueError(f"unknown networks {unknown}; known: {sorted(NETWORKS)}")
    on_cpu = device == "cpu"
    dtypes = dtypes or (("float32",) if on_cpu else tuple(DTYPES))
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise ValueError(f"unknown dtypes {bad}; known: {sorted(DTYPES)}")
    if any(t < 1 for t in threads):
        raise ValueError(f"thread counts must be >= 1, got {threads}")
    thread_counts: tuple[int | None, ...] = tuple(threads) if on_cpu else (None,)
    all_scans = scans(data_dir, sizes)
    if not all_scans:
        raise ValueError("no inputs: no real scans found and no synthetic sizes given")
    cells = [(s, n, d) for s in all_scans for n in networks for d in dtypes]
    rows = []
    before = torch.get_float32_matmul_precision()
    precision = float32_matmul_precision or before
    try:
        torch.set_float32_matmul_precision(precision)
        with load.background_load(background):
            for scan, name, dt in progress_bar(cells, desc="bench net", disable=not progress):
                row = measure_cell(
                    name, scan, device, DTYPES[dt], thread_counts, rounds, compile_net
                )
                row["background_load"] = background
                row["float32_matmul_precision"] = precision
                rows.append(row)
    finally:
        torch.set_float32_matmul_precision(before)
    return {"rows": rows, "threads": list(threads), "background_load": background,
            "float32_matmul_precision": precision}  # fmt: skip


TABLE_COLUMNS = (
    "input", "voxels", "network", "dtype", "float32_matmul_precision", "max_rel_err_vs_spconv",
    "label_agreement_vs_spconv",
)  # fmt: skip


def table_rows(rows: list[dict]) -> list[dict]:
    """The printed table: timings, ratios and the breakdown, without the long tails."""
    keep = []
    for r in rows:
        t = {k: r[k] for k in TABLE_COLUMNS if k in r}
        t.update({k: v for k, v in r.items() if k.endswith(("_ms", "_vs_spconv", "_vs_eager"))
                  and not k.startswith("train_maps")})  # fmt: skip
        keep.append(t)
    return keep


def plot(rows: list[dict], path: Path) -> Path:
    """Bar chart of per-call inference and training times per input and network."""
    plt = pyplot("the network benchmark chart")
    labels = [f"{r['network']}\n{r['input']}\n{r['dtype']}" for r in rows]
    keys = sorted({k for r in rows for k in r if k.endswith("_ms") and "_maps_" not in k
                   and "_conv_" not in k and "_other_" not in k})  # fmt: skip
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(rows)), 4.8))
    width = 0.8 / max(len(keys), 1)
    for i, key in enumerate(keys):
        ax.bar([j + i * width for j in range(len(rows))], [r.get(key, 0) for r in rows],
               width, label=key.removesuffix("_ms"))  # fmt: skip
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))], labels, fontsize=7)
    ax.set_ylabel("ms per call (lower is better)")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("sparseconv bench net")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
