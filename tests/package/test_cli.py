import json

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


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit):
        main(["nonsense"])
