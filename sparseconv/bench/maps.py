"""``sparseconv bench maps``: hash vs merge-sort map building, with spconv's index generation."""

from __future__ import annotations

from tqdm import tqdm

from sparseconv.bench import inputs, peers
from sparseconv.maps import build_kernel_map
from sparseconv.utils.timing import Threads, interleaved, median, ratio

CASES = {"subm k3": (3, 1), "down k2s2": (2, 2)}
DEFAULT_SIZES = (10_000, 100_000, 500_000, 2_000_000)


def run(device: str = "cpu", sizes=DEFAULT_SIZES, rounds: int = 7, data_dir=None) -> list[dict]:
    """One row per (input, case): median ms of each mapper and the in-run ratios."""
    sources = {
        name: (lambda p=p: inputs.load_scan_coords(p))
        for name, p in inputs.real_scans(data_dir).items()
    }
    for n in sizes:
        sources[f"synthetic-{n // 1000}k"] = lambda n=n: inputs.synthetic_coords(n)
    use_peer = peers.spconv_available()
    on_cpu = device == "cpu"
    rows = []
    for name, make in tqdm(list(sources.items()), desc="bench maps", unit="input"):
        coords = make().to(device)
        for case, (k, s) in CASES.items():
            contenders = {
                "hash": lambda c=coords, k=k, s=s: build_kernel_map(c, k, s, method="hash"),
                "mergesort": lambda c=coords, k=k, s=s: build_kernel_map(
                    c, k, s, method="mergesort"
                ),
            }
            if use_peer:
                spconv_run = peers.spconv_index_fn(coords, k, s, subm=s == 1)

                def peer(run=spconv_run):
                    if not on_cpu:
                        return run()
                    with Threads(1):  # spconv's CPU build is only correct single-threaded
                        return run()

                contenders["spconv"] = peer
            t = interleaved(contenders, rounds=rounds, device=device, inner=1 if on_cpu else 5)
            row = {"input": name, "voxels": int(coords.shape[0]), "case": case}
            row.update({f"{c}_ms": median(v) * 1e3 for c, v in t.items()})
            row["mergesort_time_over_hash"] = ratio(t, "hash", "mergesort")  # <= 1.5 is the target
            if use_peer:
                row["hash_speedup_vs_spconv"] = ratio(t, "hash", "spconv")
                row["mergesort_speedup_vs_spconv"] = ratio(t, "mergesort", "spconv")
            rows.append(row)
    return rows
