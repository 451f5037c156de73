"""``sparseconv bench conv``: per-layer forward and forward+backward, every dataflow and spconv.

Layers: submanifold k3 on the real scan at strides 1/2/4/8, strided k2s2 and transposed k2s2,
for each channel count. Maps are built before timing (both ours and spconv's indices are reused
across calls, as in a network). spconv runs with 1 thread (its only correct configuration on CPU)
and with 2 threads; the 2-thread output's error against ours is reported so the race is visible.
Achieved GFLOP/s counts the useful multiply-adds, ``2 * pairs * Cin * Cout``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from tqdm import tqdm

import sparseconv as sc
from sparseconv.bench import inputs, peers
from sparseconv.bench.timing import Threads, gemm_gflops, interleaved, median, ratio
from sparseconv.functional.dataflows import DATAFLOWS, triton_available
from sparseconv.maps import build_kernel_map
from sparseconv.nn.convert import to_spconv

DEFAULT_CHANNELS = (16, 32, 64, 128, 256)


class Layer(NamedTuple):
    name: str
    kernel: int
    stride: int
    tensor_stride: int
    transposed: bool
    coords: torch.Tensor  # the layer's input coordinates


@dataclass
class Setting:
    """What every layer of one run shares."""

    base_coords: torch.Tensor
    flows: list
    use_peer: bool
    rounds: int
    device: str
    gemm: float
    backward: bool


def _layers(coords: torch.Tensor) -> list[Layer]:
    x = sc.SparseTensor(torch.zeros(len(coords), 1), coords)
    levels = {1: x}
    for s in (2, 4, 8):
        prev = levels[s // 2]
        levels[s] = sc.functional.conv3d(prev, torch.zeros(8, 1, 1), kernel_size=2, stride=2)
    out = [Layer(f"subm k3 @s{s}", 3, 1, s, False, t.coords) for s, t in levels.items()]
    out.append(Layer("down k2s2 @s1", 2, 2, 1, False, coords))
    out.append(Layer("up k2s2 @s2", 2, 2, 2, True, levels[2].coords))
    return out


def run(
    device: str = "cpu",
    channels=DEFAULT_CHANNELS,
    rounds: int = 5,
    data_dir=None,
    backward: bool = True,
) -> dict:
    scans = inputs.real_scans(data_dir)
    if not scans:
        raise FileNotFoundError(
            "bench conv needs the real SemanticKITTI scan (shared/data); see README"
        )
    name, path = next(iter(scans.items()))
    coords = inputs.load_scan_coords(path).to(device)
    flows = [
        f
        for f in DATAFLOWS.values()
        if not f.needs_triton
        or (device.startswith("cuda") and triton_available(torch.device(device)))
    ]
    setting = Setting(
        coords, flows, peers.spconv_available() and device == "cpu", rounds, device,
        gemm_gflops(device), backward,
    )  # fmt: skip
    plan = [(c, layer) for c in channels for layer in _layers(coords)]
    rows = [
        _bench_layer(layer, c, setting) for c, layer in tqdm(plan, desc="bench conv", unit="layer")
    ]
    return {
        "input": name,
        "voxels": int(len(coords)),
        "gemm_gflops": setting.gemm,
        "device": device,
        "rows": rows,
    }


def _bench_layer(layer: Layer, c: int, st: Setting) -> dict:
    lname, k, s, ts, transposed, in_coords = layer
    base_coords, flows, use_peer, rounds, device, gemm, backward = (
        st.base_coords, st.flows, st.use_peer, st.rounds, st.device, st.gemm, st.backward
    )  # fmt: skip
    torch.manual_seed(0)
    weight = torch.randn(k**3, c, c, device=device) * (1.0 / (c * k**3) ** 0.5)
    feats = torch.randn(len(in_coords), c, device=device)
    x = _our_input(base_coords, in_coords, ts, k, s, transposed, feats)
    ref = sc.functional.conv3d(
        x, weight, kernel_size=k, stride=s, transposed=transposed, dataflow="torch"
    )
    kmap = build_kernel_map(  # the map ``ref`` just cached
        x.coords, k, s, tensor_stride=ts, transposed=transposed, cache=x.cache
    )
    pairs = int(kmap.in_idx.numel())
    contenders, contenders_bwd = {}, {}
    for f in flows:
        contenders[f.name] = lambda f=f: sc.functional.conv3d(
            x, weight, kernel_size=k, stride=s, transposed=transposed, dataflow=f.name
        )
        if backward:
            contenders_bwd[f.name] = lambda f=f: _fwd_bwd(x, weight, k, s, transposed, f.name)
    row = {"layer": lname, "channels": c, "pairs": pairs}
    if use_peer:
        sp = _spconv_layer(base_coords, in_coords, feats, weight, k, s, ts, transposed, ref.coords)
        peer_backward = backward and _spconv_backward_works(sp, row)
        for n in (1, 2):
            contenders[f"spconv_{n}t"] = lambda n=n: _with_threads(n, sp["forward"])
            if peer_backward:
                contenders_bwd[f"spconv_{n}t"] = lambda n=n: _with_threads(
                    n, sp["forward_backward"]
                )
        for n in (1, 2):
            out = _with_threads(n, sp["forward"])
            got = sp["align"](out)
            row[f"spconv_{n}t_rel_err"] = float(
                (got - ref.feats.cpu()).abs().max() / ref.feats.abs().max()
            )
    t = interleaved(contenders, rounds=rounds, device=device)
    for name, v in t.items():
        row[f"{name}_fwd_ms"] = median(v) * 1e3
    row["torch_fwd_gflops"] = 2 * pairs * c * c / median(t["torch"]) / 1e9
    row["torch_fwd_frac_of_gemm"] = row["torch_fwd_gflops"] / gemm
    if use_peer:
        row["torch_fwd_speedup_vs_spconv_1t"] = ratio(t, "torch", "spconv_1t")
    if backward:
        tb = interleaved(contenders_bwd, rounds=max(3, rounds // 2), device=device)
        for name, v in tb.items():
            row[f"{name}_fwdbwd_ms"] = median(v) * 1e3
        if "spconv_1t" in tb:
            row["torch_fwdbwd_speedup_vs_spconv_1t"] = ratio(tb, "torch", "spconv_1t")
    return row


def _our_input(base_coords, in_coords, ts, k, s, transposed, feats):
    if transposed:
        # the transposed conv inverts a strided conv: build that map first (as in a U-Net)
        fine = sc.SparseTensor(torch.zeros(len(base_coords), 1, device=feats.device), base_coords)
        coarse = sc.functional.conv3d(
            fine, torch.zeros(k**3, 1, 1, device=feats.device), kernel_size=k, stride=s
        )
        return coarse.replace_feats(feats)
    if ts == 1:
        return sc.SparseTensor(feats, in_coords)
    return sc.SparseTensor(feats, in_coords, stride=ts)


def _fwd_bwd(x, weight, k, s, transposed, flow):
    xf = x.feats.detach().requires_grad_(True)
    w = weight.detach().requires_grad_(True)
    y = sc.functional.conv3d(
        x.replace_feats(xf), w, kernel_size=k, stride=s, transposed=transposed, dataflow=flow
    )
    y.feats.sum().backward()


def _spconv_backward_works(sp: dict, row: dict) -> bool:
    """spconv's CPU wheel asks for a CUDA stream in some backward paths; report that, do not crash."""
    try:
        _with_threads(1, sp["forward_backward"])
    except (AssertionError, RuntimeError) as err:
        row["spconv_backward"] = f"unavailable on this build: {str(err).splitlines()[0][:60]}"
        return False
    return True


def _with_threads(n, fn):
    with Threads(n):
        return fn()


def _spconv_layer(base_coords, in_coords, feats, weight, k, s, ts, transposed, ref_coords):
    """spconv module and input with indices prebuilt, plus a function ordering its rows like ours."""
    import spconv.pytorch as spconv

    from sparseconv.maps import keys as K

    c = weight.shape[1]
    shift = peers.grid_shift(base_coords.cpu())
    base, shape = peers.nonnegative(base_coords.cpu())
    if transposed:
        down = spconv.SparseConv3d(c, c, k, stride=s, bias=False, indice_key="bench")
        with Threads(1):
            coarse = down(spconv.SparseConvTensor(torch.zeros(len(base), c), base, shape, 1))
        their = coarse.indices.clone()
        their[:, 1:] = their[:, 1:] * s + shift
        x_sp = coarse.replace_feature(
            feats.cpu()[_match(K.pack(in_coords.cpu()), K.pack(their.int()))]
        )
        layer = spconv.SparseInverseConv3d(c, c, k, bias=False, indice_key="bench")
    else:
        cc = in_coords.cpu().clone()
        cc[:, 1:] = torch.div(cc[:, 1:] - shift, ts, rounding_mode="floor")
        x_sp = spconv.SparseConvTensor(feats.cpu(), cc, [v // ts + 2 for v in shape], 1)
        cls = spconv.SubMConv3d if s == 1 else spconv.SparseConv3d
        layer = cls(c, c, k, stride=s, bias=False, indice_key="bench")
    with torch.no_grad():
        layer.weight.copy_(to_spconv(weight.detach().cpu(), k))
    with Threads(1):
        first = layer(x_sp)  # builds (and caches) the indices
    scale = 1 if transposed else ts * s
    their_out = first.indices.clone()
    their_out[:, 1:] = their_out[:, 1:] * scale + shift
    order = _match(K.pack(their_out.int()), K.pack(ref_coords.cpu()))

    def forward():
        with torch.no_grad():
            return layer(x_sp).features

    def forward_backward():
        f = x_sp.features.detach().requires_grad_(True)
        layer(x_sp.replace_feature(f)).features.sum().backward()

    return {
        "forward": forward,
        "forward_backward": forward_backward,
        "align": lambda out: out[order],
    }


def _match(their_keys: torch.Tensor, our_keys: torch.Tensor) -> torch.Tensor:
    """Index into ``their`` rows for each of ``our`` rows (same key set)."""
    order = torch.argsort(their_keys)
    pos = torch.searchsorted(their_keys[order], our_keys)
    return order[pos]
