"""`sparseconv prune` and `sparseconv bench prune` on a tiny trained run."""

import json

import pytest

import sparseconv as sc
from sparseconv.cli import main
from sparseconv.train import Trainer, load_config
from sparseconv.train.pruning import PruneSpec, parse_spec

TINY = ["dataset=semantickitti", "width=0.25", "voxel_size=0.5", "batch_size=1", "optimizer=adamw",
        "lr=0.01", "warmup_steps=1", "log_every=1", "device=cpu", "steps=3", "checkpoint_every=0"]  # fmt: skip


@pytest.fixture
def tiny_run(tiny_kitti, tmp_path):
    out = tmp_path / "run"
    Trainer(
        load_config(None, [*TINY, f"data_root={tiny_kitti}", f"out={out}"]), progress=False
    ).fit()
    return out


def test_prune_cli_channel_and_nm(tiny_run, capsys):
    assert (
        main(
            [
                "prune",
                "--run",
                str(tiny_run),
                "--variant",
                "channel:l2:0.5",
                "--finetune-steps",
                "2",
            ]
        )
        == 0
    )
    report = json.loads((tiny_run / "pruned" / "prune.json").read_text())
    assert report["pruned"]["macs"] < 0.5 * report["dense"]["macs"]
    model = sc.prune.load(tiny_run / "pruned" / "pruned.npz")
    assert model.stem[0][0].out_channels == 4
    assert "MACs" in capsys.readouterr().out
    out = tiny_run / "nm"
    assert (
        main(
            [
                "prune",
                "--run",
                str(tiny_run),
                "--variant",
                "nm:2:4",
                "--finetune-steps",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    nm = sc.prune.load(out / "pruned.npz")
    assert all(sc.prune.check_nm(nm).values()) and len(sc.prune.check_nm(nm)) > 10


def test_bench_prune_table_and_plot(tiny_run, tmp_path, capsys):
    js = tmp_path / "b.json"
    argv = ["bench", "prune", "--run", str(tiny_run), "--variants", "channel:uniform:0.5", "fine:l1:0.5",
            "--finetune-steps", "1", "--rounds", "2", "--json", str(js)]  # fmt: skip
    assert main(argv) == 0
    payload = json.loads(js.read_text())
    rows = payload["rows"]
    assert [r["label"] for r in rows] == ["dense", "channel uniform 0.5", "fine l1 0.5"]
    # the dense model is fine-tuned too, and every change is measured against it
    assert rows[0]["miou_finetuned"] == payload["dense_finetuned_miou"]
    assert rows[0]["delta_miou"] == 0
    assert rows[2]["delta_miou"] == rows[2]["miou_finetuned"] - payload["dense_finetuned_miou"]
    assert rows[1]["macs_ratio"] < 0.5 and rows[2]["macs_ratio"] == 1.0
    assert (tiny_run / "prune_bench" / "prune_tradeoff.png").stat().st_size > 1000
    assert "x cached" in capsys.readouterr().out
    # --device (default cpu) decides where it runs, whatever device the run was trained on
    assert payload["environment"]["device"] == "cpu"


def test_demo_and_bench_variants_parse():
    from sparseconv.bench.prune import DEFAULT_SPECS
    from sparseconv.cli.demo import DEMO_PRUNE_VARIANTS

    labels = [parse_spec(v).label for v in DEMO_PRUNE_VARIANTS]
    assert labels == ["dense", "channel l2 0.4 round 8", "2:4 l1 ends dense"]
    assert "channel l2 0.4 round 8" in {s.label for s in DEFAULT_SPECS}


def test_variant_parsing_errors():
    assert parse_spec("nm:2:4").n == 2
    spec = parse_spec("channel:l2:0.4:8")
    assert (spec.ratio, spec.round_to, spec.label) == (0.4, 8, "channel l2 0.4 round 8")
    assert parse_spec("channel:l2:0.4").round_to == 1
    spec = parse_spec("offset:work:0.33")
    assert (spec.method, spec.importance, spec.ratio, spec.label) == ("offset", "work", 0.33,
                                                                       "offset work 0.33")  # fmt: skip
    assert parse_spec("offset:pattern:cross").label == "offset cross"
    fine = parse_spec("offset:efficiency:0.33:s1")
    assert (fine.strides, fine.label) == ((1,), "offset efficiency 0.33 at stride 1")
    assert parse_spec("offset:pattern:cross:s1,2").strides == (1, 2)
    combo = parse_spec("channel:l2:0.4:8+offset:norm:0.33")
    assert combo.method == "combined" and [p.method for p in combo.parts] == ["channel", "offset"]
    assert combo.label == "channel l2 0.4 round 8 + offset norm 0.33"
    cells, single = parse_spec("voxel:0.5"), parse_spec("voxel:0.5:voxel")
    assert (cells.keep, cells.granularity, cells.label) == (0.5, "cell", "voxel keep 0.5")
    assert (single.granularity, single.label) == ("voxel", "voxel keep 0.5 single voxels")
    rand = parse_spec("voxel:0.5:random")
    assert (rand.score, rand.granularity, rand.label) == ("random", "cell", "voxel keep 0.5 random")
    assert parse_spec("voxel:0.7:learned:voxel").label == "voxel keep 0.7 learned single voxels"
    for bad in ("channel:l2", "channel:l2:0.4:0", "channel:l2:0.4:x", "nm:a:4", "what",
                "offset:norm", "offset:norm:x", "offset:norm:0.3:1", "offset:norm:0.3:s0",
                "offset:norm:0.3:s", "offset:norm:0.3:s1:s2", "dense+offset:norm:0.3", "voxel:0",
                "voxel:0.5:pixel", "voxel:0.5:voxel:random", "voxel:0.5:random:learned"):  # fmt: skip
        with pytest.raises(ValueError, match="bad variant"):
            parse_spec(bad)
    with pytest.raises(ValueError, match="method"):
        PruneSpec("magic")


def test_bench_prune_table_times_read_plainly_at_cpu_and_gpu_scale():
    from sparseconv.bench.prune import table_rows

    row = {"label": "dense", "macs": 2e9, "macs_ratio": 1.0, "nonzero_weights": 10,
           "miou_pruned": 97.0, "miou_finetuned": 97.0, "delta_miou": 0.0, "cached_ms": 8.404,
           "cached_speedup": 1.0, "e2e_ms": 1234.5, "e2e_speedup": 1.0}  # fmt: skip
    (printed,) = table_rows([row])
    assert (printed["ms cached"], printed["ms e2e"]) == ("8.4", "1234")


def test_a_stride_restricted_offset_spec_beside_voxel_pruning():
    """``offset:...:s1+voxel:0.5``: offsets removed at stride 1 only, voxels at every strided
    conv, and every input voxel still gets a prediction."""
    import torch
    from prune_helpers import scene

    from sparseconv.train import pruning

    torch.manual_seed(0)
    net = sc.models.MinkUNet(4, 5, width=0.25).eval()
    x, _ = scene(4000)
    model, info = pruning.apply(parse_spec("offset:efficiency:0.33:s1+voxel:0.5"), net, x)
    pruned = {n for n, m in model.named_modules()
              if isinstance(m, sc.nn.Conv3d) and m.kept_offsets is not None}  # fmt: skip
    assert pruned and all(n.startswith(("stem.", "fuse.3.")) for n in pruned)
    assert sum(isinstance(m, sc.nn.VoxelPrune) for m in model.modules()) == 4
    assert info["macs"] < sc.prune.count_macs(net, x)["total"]
    with torch.no_grad():
        out = model(sc.SparseTensor(x.feats, x.coords))
    assert out.shape == (len(x.coords), 5) and bool(torch.isfinite(out).all())
