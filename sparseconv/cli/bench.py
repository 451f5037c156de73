"""``sparseconv bench maps|conv``: print a table and write JSON."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks against peers, measured in one interleaved run")
    bsub = p.add_subparsers(dest="bench", required=True)
    m = bsub.add_parser(
        "maps", help="hash vs merge-sort map building, with spconv's index generation"
    )
    m.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=None,
        help="synthetic voxel counts (default 10k..2M)",
    )
    c = bsub.add_parser(
        "conv", help="per-layer forward / forward+backward for every dataflow and spconv"
    )
    c.add_argument("--channels", type=int, nargs="*", default=None, help="default 16 32 64 128 256")
    c.add_argument("--no-backward", action="store_true", help="time the forward pass only")
    c.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float16", "bfloat16"],
        help="feature and weight dtype (float16 on CUDA for the GPU table)",
    )
    n = bsub.add_parser(
        "net", help="whole networks per scan (maps built per call, cached, training) vs spconv"
    )
    n.add_argument("--networks", nargs="*", default=None,
                   help="minkunet-w0.5 minkunet-w1.0 spvcnn-w0.5 (default: all)")  # fmt: skip
    n.add_argument("--sizes", type=int, nargs="*", default=None,
                   help="synthetic voxel counts (default 10000 100000)")  # fmt: skip
    n.add_argument("--dtypes", nargs="*", default=None,
                   help="float32 float16 bfloat16 (default: float32 on CPU, all on CUDA)")  # fmt: skip
    n.add_argument("--threads", type=int, nargs="*", default=None,
                   help="sparseconv CPU thread counts (default 1 2)")  # fmt: skip
    n.add_argument("--background-load", type=int, default=0,
                   help="busy processes running beside every contender")  # fmt: skip
    n.add_argument("--compile", action="store_true", help="also time torch.compile(network)")
    n.add_argument("--float32-matmul-precision", default=None,
                   choices=["highest", "high", "medium"],
                   help="torch.set_float32_matmul_precision for every contender during the run "
                        "(medium: float32 products in bf16 on AMX CPUs, spconv's torch.mm too)")  # fmt: skip
    n.add_argument("--png", type=Path, default=Path("bench_net.png"), help="bar chart path")
    pr = bsub.add_parser(
        "prune", help="dense vs pruned variants of a trained run: mIoU, MACs, latency"
    )
    pr.add_argument("--run", type=Path, required=True, help="run folder of `sparseconv train`/demo")
    pr.add_argument(
        "--variants", nargs="*", default=None,
        help="dense, channel:<importance>:<ratio>[:<round_to>], nm:<n>:<m>[:ends], fine:<importance>:<sparsity>, "
        "offset:<norm|work|efficiency|taylor|random>:<ratio>[:s<strides>], offset:pattern:<cross|shell19>[:s<strides>] (s1: stride-1 convs only), voxel:<keep>[:learned|:random][:voxel], several joined by + "
        "(default: dense; channel l2 / uniform / random 0.3; channel l2 / uniform 0.4 round 8; "
        "2:4, also with the ends dense; fine 0.5; offset efficiency / random 1/3, offset cross; "
        "voxel 0.5, also random; channel + offset; offset at stride 1 + voxel 0.5, also with "
        "channel)",
    )  # fmt: skip
    pr.add_argument("--finetune-steps", type=int, default=100, help="per variant, at lr/10")
    for q in (m, c, n, pr):
        q.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
        q.add_argument(
            "--json", type=Path, default=None, help="write the results to this JSON file"
        )
        q.add_argument("--rounds", type=int, default=7, help="interleaved rounds per measurement")
        q.add_argument(
            "--data",
            type=Path,
            default=None,
            help="folder with the real scans (default ../shared/data)",
        )
        q.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sparseconv.bench import conv, maps, report

    if args.bench == "prune":
        return run_prune_bench(args)
    if args.bench == "net":
        return run_net_bench(args)

    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but no CUDA device is available")
    env = report.environment(args.device)
    if args.bench == "maps":
        sizes = tuple(args.sizes) if args.sizes is not None else maps.DEFAULT_SIZES
        rows = maps.run(args.device, sizes, args.rounds, args.data)
        payload = {"environment": env, "rows": rows}
    else:
        channels = tuple(args.channels) if args.channels else conv.DEFAULT_CHANNELS
        payload = conv.run(
            args.device,
            channels,
            args.rounds,
            args.data,
            backward=not args.no_backward,
            dtype=args.dtype,
        )
        payload["environment"] = env
        rows = payload["rows"]
        rate = payload["gemm_gflops"]
        print(
            f"machine GEMM rate (2048^3 {payload['gemm_dtype']} mm, timed in every layer's rounds; "
            f"median): {rate:.1f} GFLOP/s"
        )
    print(report.format_table(rows))
    if args.json:
        report.save_json(args.json, payload)
        print(f"wrote {args.json}")
    return 0


def run_prune_bench(args: argparse.Namespace) -> int:
    from sparseconv.bench import prune, report
    from sparseconv.train.pruning import parse_spec

    specs = [parse_spec(v) for v in args.variants] if args.variants else prune.DEFAULT_SPECS
    if specs[0].method != "dense":
        specs = [parse_spec("dense"), *specs]
    payload = prune.run(args.run, specs, args.finetune_steps, args.rounds, device=args.device)
    print(
        f"dense mIoU {payload['dense_miou']:.1f} % ({payload['dense_finetuned_miou']:.1f} % after the "
        f"same {args.finetune_steps} fine-tuning steps, the reference for dmIoU)"
    )
    print(report.format_table(prune.table_rows(payload["rows"])))
    print(f"plot: {payload['out_dir']}/prune_tradeoff.png")
    if args.json:
        report.save_json(args.json, payload)
        print(f"wrote {args.json}")
    return 0


def run_net_bench(args: argparse.Namespace) -> int:
    from sparseconv.bench import net, report

    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but no CUDA device is available")
    payload = net.run(
        args.device,
        tuple(args.networks) if args.networks else net.DEFAULT_NETWORKS,
        tuple(args.sizes) if args.sizes is not None else net.DEFAULT_SIZES,
        args.rounds,
        args.data,
        tuple(args.dtypes) if args.dtypes else None,
        tuple(args.threads) if args.threads else (1, 2),
        args.background_load,
        args.compile,
        float32_matmul_precision=args.float32_matmul_precision,
    )
    payload["environment"] = report.environment(args.device)
    print(report.format_table(net.table_rows(payload["rows"])))
    try:
        print(f"chart: {net.plot(payload['rows'], args.png)}")
    except ImportError as err:
        print(f"no chart: {err}")
    if args.json:
        report.save_json(args.json, payload)
        print(f"wrote {args.json}")
    return 0
