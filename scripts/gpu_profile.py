"""Where a sparse conv layer's time goes on CUDA: the whole call against its bare kernels.

    python scripts/gpu_profile.py SCAN.bin [OUTDIR]

For each layer it prints the median time of one ``conv3d`` call (``triton.testing.do_bench``,
CUDA events), the time of the kernels alone on a prebuilt map, and a ``torch.profiler`` table
of the host-side operators, so launch and bookkeeping overhead is visible beside GPU time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from triton.testing import do_bench

import sparseconv as sc
from sparseconv.bench import inputs
from sparseconv.functional import conv3d
from sparseconv.kernels.implicit_gemm import implicit_gemm
from sparseconv.maps import build_kernel_map


def _layer(coords, c, kind):
    g = torch.Generator().manual_seed(c)
    x = sc.SparseTensor(torch.zeros(len(coords), 1, device="cuda"), coords)
    k, kw = (3, {}) if kind == "subm" else (2, dict(stride=2))
    if kind == "up":
        x = conv3d(x, torch.zeros(8, 1, 1, device="cuda"), kernel_size=2, stride=2)
        kw["transposed"] = True
    feats = torch.randn(len(x), c, generator=g).to("cuda", torch.float16)
    w = (torch.randn(k**3, c, c, generator=g) / (c * k**3) ** 0.5).to("cuda", torch.float16)
    return x.replace_feats(feats), w, dict(kernel_size=k, **kw)


def main() -> None:
    scan = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    coords = inputs.load_scan_coords(scan).cuda()
    lines = []
    for kind, c in (("subm", 16), ("subm", 64), ("subm", 256), ("up", 64), ("down", 64)):
        x, w, kw = _layer(coords, c, kind)
        kmap = build_kernel_map(
            x.coords, kw["kernel_size"], kw.get("stride", 1), tensor_stride=x.stride,
            transposed=kw.get("transposed", False), cache=x.cache,
        )  # fmt: skip
        nb = kmap.nbmap
        row = [f"{kind} C{c}"]
        for flow in ("triton_implicit_gemm", "triton_gather_scatter", "torch"):
            t = do_bench(lambda: conv3d(x, w, dataflow=flow, **kw), return_mode="median")  # noqa: B023
            row.append(f"{flow}={t * 1e3:.0f}us")
        t_k = do_bench(lambda: implicit_gemm(x.feats, w, nb), return_mode="median")  # noqa: B023
        row.append(f"bare_implicit_gemm_kernel={t_k * 1e3:.0f}us pairs={kmap.in_idx.numel()}")
        lines.append("  ".join(row))
        print(lines[-1], flush=True)
        if (kind, c) in (("subm", 64), ("up", 64)):
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(20):
                    conv3d(x, w, dataflow="triton_implicit_gemm", **kw)
                torch.cuda.synchronize()
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
            lines.append(table)
            print(table, flush=True)
    for k, s in ((3, 1), (2, 2)):
        t = do_bench(lambda: build_kernel_map(coords, k, s, method="hash"), return_mode="median")  # noqa: B023
        lines.append(f"map k{k}s{s} hash {t * 1e3:.0f}us")
        print(lines[-1], flush=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            build_kernel_map(coords, 3, 1, method="hash")
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    lines.append(table)
    print(table, flush=True)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "profile.txt").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
