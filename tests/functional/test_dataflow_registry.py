"""The dataflow registry, the torch planner and the autotune cache."""

import json
import logging

import pytest
import torch
from reference import random_coords

import sparseconv as sc
from sparseconv.functional import dataflow_torch
from sparseconv.functional.dataflows import (
    AUTOTUNE,
    DATAFLOWS,
    AutotuneCache,
    check_name,
    resolve,
)
from sparseconv.maps import build_kernel_map


def _layer(c_in=4, c_out=8, n=300, seed=0):
    coords = random_coords(n, extent=12, seed=seed)
    torch.manual_seed(seed)
    return torch.randn(len(coords), c_in), torch.randn(27, c_in, c_out), build_kernel_map(coords, 3)


def test_every_record_names_its_backend_and_algorithm():
    for name, flow in DATAFLOWS.items():
        assert flow.name == name
        assert flow.backend in ("torch", "c", "triton")
        assert flow.algorithm in ("planned", "gather_scatter", "output_blocks", "implicit_gemm")
        if name != "torch":
            backend = "cpu" if flow.backend == "c" else flow.backend
            assert name == f"{backend}_{flow.algorithm}"
    assert [n for n, f in DATAFLOWS.items() if f.deterministic] == [
        "cpu_implicit_gemm",
        "triton_implicit_gemm",
    ]


def test_torch_planner_picks_output_blocks_only_for_narrow_cpu_float_layers():
    x, w, km = _layer(4, 8)
    plan = dataflow_torch._plan(km, False, 0.25)
    assert dataflow_torch.choose_algorithm(x, w, plan) == "output_blocks"
    wide = torch.randn(27, 4, 64)
    assert dataflow_torch.choose_algorithm(x, wide, plan) == "gather_scatter"
    assert dataflow_torch.choose_algorithm(x.half(), w.half(), plan) == "gather_scatter"
    assert "float32/float64" in DATAFLOWS["torch_output_blocks"].unsupported(x.half())


def test_named_dataflows_are_checked_where_they_are_given():
    with pytest.raises(ValueError, match="dataflow must be 'auto' or one of"):
        check_name("bogus")
    with pytest.raises(ValueError, match="'bogus'"):
        sc.nn.Conv3d(4, 8, 3, dataflow="bogus")
    x, w, km = _layer()
    with pytest.raises(ValueError, match="float32/float64"):
        resolve("torch_output_blocks", x.half(), w.half(), km, False)
    with pytest.raises(ValueError, match="uses atomics"):
        resolve("torch", x, w, km, True)


def test_cache_key_names_the_device_index_and_the_map_shape():
    x, w, km = _layer()
    key = AutotuneCache.key(x, w, km, False)
    assert key.startswith("cpu:0|float32|4|8|27|1|")
    assert key != AutotuneCache.key(x, w, km, True)
    assert key != AutotuneCache.key(x.double(), w.double(), km, False)


def test_cache_times_once_logs_the_choice_and_round_trips(tmp_path, caplog):
    cache = AutotuneCache()
    flows = [DATAFLOWS["torch"], DATAFLOWS["torch_gather_scatter"]]
    timed = []

    def time_one(flow):
        timed.append(flow.name)
        return {"torch": 2.0, "torch_gather_scatter": 1.0}[flow.name]

    with caplog.at_level(logging.INFO, logger="sparseconv.autotune"):
        assert cache.choose("k1", flows, time_one).name == "torch_gather_scatter"
        assert cache.choose("k1", flows, time_one).name == "torch_gather_scatter"
    assert timed == ["torch", "torch_gather_scatter"]  # the second call reused the choice
    assert "k1 -> torch_gather_scatter" in caplog.text
    path = cache.save(tmp_path / "tune.json")
    assert json.loads(path.read_text())["choices"] == {"k1": "torch_gather_scatter"}
    again = AutotuneCache()
    again.load(path)
    assert again.choose("k1", flows, lambda f: pytest.fail("a pinned choice is not timed"))
    again.clear()
    assert again.choices == {}


def test_cache_refuses_bad_files_and_unknown_names(tmp_path):
    cache = AutotuneCache()
    with pytest.raises(ValueError, match="unknown dataflow 'nope'"):
        cache.pin("k", "nope")
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    with pytest.raises(ValueError, match="not an autotune file"):
        cache.load(bad)
    bad.write_text(json.dumps({"choices": {"k": "nope"}}))
    with pytest.raises(ValueError, match="unknown dataflow"):
        cache.load(bad)


def test_a_pinned_choice_drives_auto():
    x, w, km = _layer()
    key = AutotuneCache.key(x, w, km, False)
    saved = AUTOTUNE.choices
    try:
        first = resolve("auto", x, w, km, False).name  # remembered by the fast path
        other = "torch" if first != "torch" else "cpu_implicit_gemm"
        if other in DATAFLOWS:
            AUTOTUNE.pin(key, other)  # a new pin must reach a remembered answer
            assert resolve("auto", x, w, km, False).name == other
        AUTOTUNE.pin(key, "torch")
        assert resolve("auto", x, w, km, False).name == "torch"
    finally:
        AUTOTUNE.clear()
        for k, v in saved.items():
            AUTOTUNE.pin(k, v)
