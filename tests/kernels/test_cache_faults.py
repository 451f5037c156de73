"""Faults in the C-kernel cache: unusable, untrusted or corrupted folders, concurrent builds."""

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from reference import needs_cpu_kernels, random_coords

import sparseconv as sc
from sparseconv.kernels import cpu_library

pytestmark = needs_cpu_kernels


@pytest.fixture
def fresh_library(monkeypatch, tmp_path):
    """An unbuilt library state with the cache and the fallback folder under tmp_path."""
    monkeypatch.setattr(cpu_library, "_state", {})
    monkeypatch.setattr(cpu_library, "fallback_dir", lambda: tmp_path / "fallback")
    return tmp_path


def _conv_works():
    coords = random_coords(200, extent=8, seed=1)
    x = sc.SparseTensor(torch.randn(len(coords), 4), coords)
    w = torch.randn(27, 4, 8)
    ref = sc.functional.conv3d(x, w, dataflow="torch").feats
    got = sc.functional.conv3d(x, w).feats
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_a_cache_path_that_is_not_a_folder_falls_back_to_the_private_temp_folder(
    fresh_library, monkeypatch
):
    blocker = fresh_library / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("SPARSECONV_CACHE", str(blocker))
    assert cpu_library.available(), cpu_library.unavailable_reason()
    assert any((fresh_library / "fallback").glob("*.so"))
    _conv_works()


def test_a_folder_others_can_write_is_not_trusted(fresh_library, monkeypatch):
    shared = fresh_library / "shared"
    (shared / "cpu_kernels").mkdir(parents=True)
    os.chmod(shared / "cpu_kernels", 0o777)
    monkeypatch.setenv("SPARSECONV_CACHE", str(shared))
    assert cpu_library.available()
    assert not any((shared / "cpu_kernels").glob("*.so"))  # nothing loaded from there
    assert any((fresh_library / "fallback").glob("*.so"))


def test_a_corrupted_cached_library_is_rebuilt(fresh_library, monkeypatch):
    monkeypatch.setenv("SPARSECONV_CACHE", str(fresh_library / "cache"))
    folder = fresh_library / "cache" / "cpu_kernels"
    folder.mkdir(parents=True)
    target = folder / cpu_library._library_name(os.environ.get("CC", "gcc"))
    target.write_bytes(b"\x7fELF truncated garbage")
    assert cpu_library.available(), cpu_library.unavailable_reason()
    assert target.stat().st_size > 1000
    _conv_works()


def test_no_usable_folder_warns_once_and_the_torch_dataflow_serves(fresh_library, monkeypatch):
    blocker = fresh_library / "file"
    blocker.write_text("x")
    monkeypatch.setenv("SPARSECONV_CACHE", str(blocker))
    monkeypatch.setattr(cpu_library, "fallback_dir", lambda: blocker / "below-a-file")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert not cpu_library.available()
        assert not cpu_library.available()
    assert len([w for w in seen if "C kernels are unavailable" in str(w.message)]) == 1
    assert "no usable kernel cache" in cpu_library.unavailable_reason()
    _conv_works()  # auto falls back to the torch dataflow and maps


def test_two_processes_building_at_once_both_succeed(tmp_path):
    code = textwrap.dedent(
        """
        import torch, sparseconv as sc
        from sparseconv.kernels import cpu_library
        assert cpu_library.available(), cpu_library.unavailable_reason()
        x = sc.SparseTensor(torch.ones(3, 2), torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1],
                                                             [0, 1, 0, 0]], dtype=torch.int32))
        print(sc.functional.conv3d(x, torch.ones(27, 2, 1), dataflow="cpu_implicit_gemm").feats.sum().item())
        """
    )
    env = {**os.environ, "SPARSECONV_CACHE": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd="/")
        for _ in range(2)
    ]  # fmt: skip
    results = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
        assert out.strip() == "18.0"  # the 3 voxels are mutual neighbours: 3 x 3 x 2 channels
    assert len(list(Path(tmp_path / "cache" / "cpu_kernels").glob("*.so"))) == 1


def test_the_avx2_register_kernels_agree_too(tmp_path):
    """-march=native picks the AVX-512 kernels where the CPU has them; the 6 x 16 AVX2 branch
    (what CPUs without AVX-512 run) is built here with -mno-avx512f and checked the same way."""
    code = textwrap.dedent(
        """
        import torch, sparseconv as sc
        from sparseconv.kernels import cpu_library
        from sparseconv.functional import dataflow_torch
        from sparseconv.functional.dataflows import DATAFLOWS
        assert cpu_library.lib().sc_max_panel() == 16
        g = torch.Generator().manual_seed(0)
        coords = torch.unique(torch.randint(0, 12, (600, 3), generator=g), dim=0)
        coords = torch.cat([torch.zeros(len(coords), 1, dtype=torch.long), coords], 1).int()
        km = sc.maps.build_kernel_map(coords, 3)
        flow = DATAFLOWS["cpu_implicit_gemm"]
        for cin, cout in ((5, 7), (16, 32), (64, 64)):
            x, w = torch.randn(len(coords), cin), torch.randn(27, cin, cout)
            dy = torch.randn(len(coords), cout)
            pairs = [(flow.forward(x, w, km), dataflow_torch.forward(x, w, km)),
                     (flow.backward_input(dy, w, km), dataflow_torch.backward_input(dy, w, km)),
                     (flow.backward_weight(x, dy, km), dataflow_torch.backward_weight(x, dy, km))]
            for got, want in pairs:
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        print("ok")
        """
    )
    env = {**os.environ, "SPARSECONV_CACHE": str(tmp_path), "SPARSECONV_CFLAGS": "-mno-avx512f"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd="/", timeout=300)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
