"""``sparseconv bench conv``: per-layer forward and forward+backward, every dataflow and spconv.

Layers: submanifold k3 on the real scan at strides 1/2/4/8, strided k2s2 and transposed k2s2,
for each channel count. Maps are built before timing (both ours and spconv's indices are reused
across calls, as in a network). On CPU spconv runs with 1 thread (its only correct configuration)
and with 2 threads; the 2-thread output's error against ours is reported so the race is visible.
On CUDA spconv (a CUDA wheel) runs once per round like our dataflows, in the same dtype.
Every dataflow's output is compared with the ``torch`` dataflow's (``<flow>_rel_err``) before it
is timed. Achieved GFLOP/s counts the useful multiply-adds, ``2 * pairs * Cin * Cout``; its
fraction of the machine's GEMM rate is the median over rounds of the layer's rate over that of a 2048^3
``torch.mm`` timed in the same round (on the same device; in the layer's dtype on CUDA, in
float32 on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from tqdm import tqdm

import sparseconv as sc
from sparseconv.bench import inputs, peers
from sparseconv.bench.gemm_rate import gemm_reference
from sparseconv.functional.dataflows import DATAFLOWS
from sparseconv.kernels import cpu_implicit_gemm
from sparseconv.maps import build_kernel_map
from sparseconv.nn.convert import to_spconv
from sparseconv.utils.timing import Threads, interleaved, median, ratio

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
    gemm: tuple  # (2048^3 torch.mm contender, its flops): timed in every layer's rounds
    backward: bool
    dtype: torch.dtype

    @property
    def peer(self) -> str:
        """The spconv contender every speed-up is quoted against (its correct configuration)."""
        return "spconv" if self.device.startswith("cuda") else "spconv_1t"

    @property
    def inner(self) -> int:
        return 10 if self.device.startswith("cuda") else 1


def _layers(coords: torch.Tensor) -> list[Layer]:
    x = sc.SparseTensor(torch.zeros(len(coords), 1, device=coords.device), coords)
    levels = {1: x}
    w = torch.zeros(8, 1, 1, device=coords.device)
    for s in (2, 4, 8):
        levels[s] = sc.functional.conv3d(levels[s // 2], w, kernel_size=2, stride=2)
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
    dtype: str = "float32",
) -> dict:
    scans = inputs.real_scans(data_dir)
    if not scans:
        raise FileNotFoundError(
            "bench conv needs the real SemanticKITTI scan (shared/data); see README"
        )
    name, path = next(iter(scans.items()))
    coords = inputs.load_scan_coords(path).to(device)
    tdtype = getattr(torch, dtype)
    probe = torch.empty(0, 1, device=device, dtype=tdtype)
    flows = [f for f in DATAFLOWS.values() if f.tunable(probe)]
    if device == "cpu" and tdtype == torch.float16:
        raise ValueError(
            "bench conv on CPU runs float32 or bfloat16 (CPU has no fast float16 GEMM)"
        )
    # CPU: the float32 rate is the machine's GEMM rate, except with AMX, where torch's bfloat16
    # GEMM runs on the tile unit (elsewhere it is a slow fallback without bf16 instructions: a
    # 2048^3 mm took about a minute on an AVX2 machine of this project)
    bf16_tiles = tdtype == torch.bfloat16 and cpu_implicit_gemm.amx_available()
    gemm_dtype = tdtype if device.startswith("cuda") or bf16_tiles else torch.float32
    use_peer = peers.spconv_available() and (device != "cpu" or tdtype == torch.float32)
    setting = Setting(
        coords, flows, use_peer, rounds, device, gemm_reference(device, dtype=gemm_dtype), backward,
        tdtype,
    )  # fmt: skip
    plan = [(c, layer) for c in channels for layer in _layers(coords)]
    rows = [
        _bench_layer(layer, c, setting) for c, layer in tqdm(plan, desc="bench conv", unit="layer")
    ]
    return {
        "input": name,
        "voxels": int(len(coords)),
        "gemm_gflops": median([r["gemm_gflops_same_rounds"] for r in rows]),
        "device": device,
        "dtype": dtype,
        "gemm_dtype": str(gemm_dtype).removeprefix("torch."),
        "rows": rows,
    }


def _bench_layer(layer: Layer, c: int, st: Setting) -> dict:
    lname, k, s, ts, transposed, in_coords = layer
    torch.manual_seed(0)
    weight = (torch.randn(k**3, c, c) * (1.0 / (c * k**3) ** 0.5)).to(st.device, st.dtype)
    feats = torch.randn(len(in_coords), c).to(st.device, st.dtype)
    x = _our_input(st.base_coords, in_coords, ts, k, s, transposed, feats)
    conv = dict(kernel_size=k, stride=s, transposed=transposed)
    ref = sc.functional.conv3d(x, weight, dataflow="torch", **conv)
    kmap = build_kernel_map(x.coords, k, s, tensor_stride=ts, transposed=transposed, cache=x.cache)
    pairs = int(kmap.in_idx.numel())  # the map ``ref`` just cached
    contenders, contenders_bwd = {}, {}
    for f in st.flows:
        contenders[f.name] = lambda f=f: sc.functional.conv3d(x, weight, dataflow=f.name, **conv)
        if st.backward:
            contenders_bwd[f.name] = lambda f=f: _fwd_bwd(x, weight, conv, f.name)
    row = {"layer": lname, "channels": c, "pairs": pairs}
    for f in st.flows:  # a fast wrong answer must not pass as a result: check each one first
        if f.name != "torch":
            row[f"{f.name}_rel_err"] = _rel_err(contenders[f.name]().feats, ref.feats)
    if st.use_peer:
        sp = _spconv_layer(
            st.base_coords, in_coords, feats, weight, k, s, ts, transposed, ref.coords
        )
        _add_peer(sp, row, ref.feats, st, contenders, contenders_bwd)
    mm, mm_flops = st.gemm
    t = interleaved({**contenders, "mm": mm}, rounds=st.rounds, device=st.device, inner=st.inner)
    t_mm = t.pop("mm")
    row["gemm_gflops_same_rounds"] = mm_flops / median(t_mm) / 1e9
    flops = 2 * pairs * c * c
    for name, v in t.items():
        row[f"{name}_fwd_ms"] = median(v) * 1e3
    for f in st.flows:
        row[f"{f.name}_fwd_gflops"] = flops / median(t[f.name]) / 1e9
        # median over rounds of (layer rate / mm rate), both timed in the same round
        in_round = ratio({**t, "mm": t_mm}, f.name, "mm")  # median of t_mm / t_layer
        row[f"{f.name}_fwd_frac_of_gemm"] = flops / mm_flops * in_round
        if st.peer in t:
            row[f"{f.name}_fwd_speedup_vs_{st.peer}"] = ratio(t, f.name, st.peer)
    if st.backward:
        rounds = max(3, st.rounds // 2)
        tb = interleaved(contenders_bwd, rounds=rounds, device=st.device, inner=st.inner)
        for name, v in tb.items():
            row[f"{name}_fwdbwd_ms"] = median(v) * 1e3
        for f in st.flows:
            if st.peer in tb:
                row[f"{f.name}_fwdbwd_speedup_vs_{st.peer}"] = ratio(tb, f.name, st.peer)
    return row


def _add_peer(sp: dict, row: dict, ref: torch.Tensor, st: Setting, fwd: dict, bwd: dict) -> None:
    """spconv's contenders (1 and 2 threads on CPU, one on CUDA) and its error against ours."""
    peer_backward = st.backward and _spconv_backward_works(sp, row)
    threads = (1, 2) if st.device == "cpu" else (None,)
    for n in threads:
        name = "spconv" if n is None else f"spconv_{n}t"
        fwd[name] = lambda n=n: _with_threads(n, sp["forward"])
        if peer_backward:
            bwd[name] = lambda n=n: _with_threads(n, sp["forward_backward"])
        out = sp["first"] if n is None else _with_threads(n, sp["forward"])
        row[f"{name}_rel_err"] = _rel_err(sp["align"](out), ref)
    if sp["rebuilds_indices"]:
        row["spconv_time_includes_index_build"] = True


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Max absolute error over the max magnitude of the reference (torch dataflow) output."""
    got, ref = got.detach().float(), ref.detach().float()
    return float((got - ref).abs().max() / ref.abs().max().clamp(min=1e-30))


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


def _fwd_bwd(x, weight, conv: dict, flow: str):
    xf = x.feats.detach().requires_grad_(True)
    w = weight.detach().requires_grad_(True)
    sc.functional.conv3d(x.replace_feats(xf), w, dataflow=flow, **conv).feats.sum().backward()


def _spconv_backward_works(sp: dict, row: dict) -> bool:
    """spconv's CPU wheel asks for a CUDA stream in some backward paths; report that, do not crash."""
    try:
        _with_threads(1, sp["forward_backward"])
    except (AssertionError, RuntimeError) as err:
        row["spconv_backward"] = f"unavailable on this build: {str(err).splitlines()[0][:60]}"
        return False
    return True


def _with_threads(n, fn):
    if n is None:  # CUDA: CPU threads are irrelevant
        return fn()
    with Threads(n):
        return fn()


def _spconv_layer(base_coords, in_coords, feats, weight, k, s, ts, transposed, ref_coords):
    """spconv module and input with indices prebuilt, plus a function ordering its rows like ours.

    Built on the device and in the dtype of ``feats``; index arithmetic stays on the CPU.
    """
    import spconv.pytorch as spconv

    from sparseconv.maps import keys as coord_keys

    c, dev, on_cpu = weight.shape[1], feats.device, feats.device.type == "cpu"
    cpu_threads = 1 if on_cpu else None
    # CPU: the native gather-GEMM-scatter (a CUDA wheel's default, implicit GEMM, is CUDA-only);
    # CUDA: spconv's default, its fastest
    algo = dict(algo=spconv.ConvAlgo.Native) if on_cpu else {}
    shift = peers.grid_shift(base_coords.cpu())
    base, shape = peers.nonnegative(base_coords.cpu())
    if transposed:
        down = spconv.SparseConv3d(c, c, k, stride=s, bias=False, indice_key="bench", **algo)
        down = down.to(dev, feats.dtype)
        zeros = torch.zeros(len(base), c, device=dev, dtype=feats.dtype)
        coarse = _with_threads(
            cpu_threads, lambda: down(spconv.SparseConvTensor(zeros, base.to(dev), shape, 1))
        )
        their = coarse.indices.cpu().clone()
        their[:, 1:] = their[:, 1:] * s + shift
        x_sp = coarse.replace_feature(
            feats[_match(coord_keys.pack(in_coords.cpu()), coord_keys.pack(their.int())).to(dev)]
        )
        layer = spconv.SparseInverseConv3d(c, c, k, bias=False, indice_key="bench", **algo)
    else:
        cc = in_coords.cpu().clone()
        cc[:, 1:] = torch.div(cc[:, 1:] - shift, ts, rounding_mode="floor")
        x_sp = spconv.SparseConvTensor(feats, cc.to(dev), [v // ts + 2 for v in shape], 1)
        cls = spconv.SubMConv3d if s == 1 else spconv.SparseConv3d
        layer = cls(c, c, k, stride=s, bias=False, indice_key="bench", **algo)
    layer = layer.to(dev, feats.dtype)
    with torch.no_grad():
        layer.weight.copy_(to_spconv(weight.detach().float().cpu(), k).to(dev, feats.dtype))
    first = _with_threads(cpu_threads, lambda: layer(x_sp))  # builds (and caches) the indices
    scale = 1 if transposed else ts * s
    their_out = first.indices.cpu().clone()
    their_out[:, 1:] = their_out[:, 1:] * scale + shift
    order = _match(coord_keys.pack(their_out.int()), coord_keys.pack(ref_coords.cpu())).to(dev)

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
        # spconv can reuse only submanifold and inverse indices: a strided SparseConv3d rebuilds
        # its pairs on every call, and on CUDA their order changes from call to call
        "first": first.features,
        "rebuilds_indices": s > 1 and not transposed,
    }


def _match(their_keys: torch.Tensor, our_keys: torch.Tensor) -> torch.Tensor:
    """Index into ``their`` rows for each of ``our`` rows (same key set)."""
    order = torch.argsort(their_keys)
    pos = torch.searchsorted(their_keys[order], our_keys)
    return order[pos]
