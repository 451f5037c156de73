import json

import numpy as np
import pytest

from sparseconv.cli import main


def test_bench_maps_small_writes_json(tmp_path, capsys):
    out = tmp_path / "maps.json"
    assert (
        main(
            [
                "bench",
                "maps",
                "--sizes",
                "3000",
                "--rounds",
                "2",
                "--json",
                str(out),
                "--data",
                str(tmp_path),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())["rows"]
    assert {r["case"] for r in rows} == {"subm k3", "down k2s2"}
    assert all(r["hash_ms"] > 0 and r["mergesort_ms"] > 0 for r in rows)
    assert "mergesort_time_over_hash" in capsys.readouterr().out


def test_bench_conv_without_real_scan_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="real SemanticKITTI scan"):
        main(["bench", "conv", "--data", str(tmp_path), "--channels", "16"])


def test_bench_conv_on_a_small_scan_checks_and_times_every_cpu_dataflow(tmp_path, capsys):
    """The whole bench on a 3 m patch of ground written in the real scan's file layout."""
    velodyne = tmp_path / "semantickitti" / "sequences" / "08" / "velodyne"
    velodyne.mkdir(parents=True)
    g = np.random.default_rng(0)
    pts = np.concatenate([g.random((4000, 2)) * 3, g.random((4000, 2)) * 0.1], 1)
    pts.astype(np.float32).tofile(velodyne / "000000.bin")
    out = tmp_path / "conv.json"
    args = ["bench", "conv", "--data", str(tmp_path), "--channels", "8", "--rounds", "1"]
    assert main([*args, "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["gemm_gflops"] > 0
    rows = payload["rows"]
    assert [r["layer"] for r in rows][:2] == ["subm k3 @s1", "subm k3 @s2"] and len(rows) == 6
    for r in rows:
        assert r["torch_fwd_ms"] > 0 and r["torch_fwdbwd_ms"] > 0
        assert r["torch_fwd_frac_of_gemm"] > 0
        assert r["cpu_implicit_gemm_rel_err"] < 1e-5  # the C kernels build on every CI machine
    assert "machine GEMM rate" in capsys.readouterr().out


def test_unknown_command_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["nonsense"])
    assert exit_info.value.code == 2  # argparse's usage error
    assert "invalid choice: 'nonsense'" in capsys.readouterr().err


def _cli(*args, cwd=None):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "sparseconv.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)  # fmt: skip


def test_user_errors_are_one_line_with_exit_code_2(tmp_path):
    """A corrupt checkpoint, a run without checkpoints, --resume with none: a message, no trace."""
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    empty_run = tmp_path / "run"
    (empty_run / "checkpoints").mkdir(parents=True)
    config = tmp_path / "cfg.yaml"
    config.write_text(f"out: {tmp_path / 'fresh'}\n")
    cases = [
        (["eval", "--checkpoint", bad], "not a sparseconv checkpoint"),
        (["eval", "--checkpoint", tmp_path / "none.pt"], "checkpoint not found"),
        (["prune", "--run", empty_run], "no checkpoint in"),
        (["train", "--config", config, "--resume"], "--resume: no checkpoint"),
        (["train", "lerning_rate=0.1"], "unknown config key 'lerning_rate'"),
        (["bench", "net", "--networks", "resnet"], "unknown networks"),
    ]
    for args, message in cases:
        done = _cli(*args)
        assert done.returncode != 0, args
        assert message in done.stderr, (args, done.stderr[-500:])
        assert "Traceback" not in done.stderr, (args, done.stderr[-800:])


def test_bench_net_small_run_checks_the_twin_and_writes_table_json_and_chart(tmp_path, capsys):
    out, png = tmp_path / "net.json", tmp_path / "net.png"
    args = ["bench", "net", "--networks", "minkunet-w0.5", "--sizes", "3000", "--data",
            str(tmp_path / "no-real-scans"), "--rounds", "1", "--threads", "1", "2"]  # fmt: skip
    assert main([*args, "--json", str(out), "--png", str(png)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["network"] == "minkunet-w0.5" and row["voxels"] == 3000
    for key in ("e2e_1t_ms", "e2e_2t_ms", "cached_2t_ms", "train_1t_ms", "e2e_maps_ms",
                "e2e_conv_ms", "e2e_other_ms"):  # fmt: skip
        assert row[key] > 0, key
    assert row["max_rel_err_vs_spconv"] < 1e-5  # the spconv twin computes the same network
    assert row["e2e_2t_vs_spconv"] > 0
    assert png.stat().st_size > 10_000
    assert "e2e_2t_ms" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown networks"):
        main(["bench", "net", "--networks", "resnet"])
