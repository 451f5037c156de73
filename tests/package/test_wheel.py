"""The wheel holds exactly one top-level package, with kernels and datasets inside it."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_has_one_top_level_package(tmp_path):
    pytest.importorskip("build")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"sparseconv"}
    assert "sparseconv/kernels/gather_scatter.py" in names
    assert "sparseconv/datasets/synthetic.py" in names
    assert "sparseconv/kernels/cpu/implicit_gemm.c" in names  # compiled on first use
    assert "sparseconv/kernels/cpu/kernel_map.c" in names
    # every source sub-package is shipped (the package list in pyproject.toml is explicit)
    for init in (ROOT / "sparseconv").rglob("__init__.py"):
        rel = init.relative_to(ROOT).as_posix()
        assert rel in names, f"{rel} missing from the wheel: add it to [tool.setuptools] packages"


def test_installed_package_imports_mapped_subpackages():
    import sparseconv.datasets
    import sparseconv.kernels

    assert Path(sparseconv.kernels.__file__).parent.name == "kernels"
    assert hasattr(sparseconv.datasets, "synthesize_scan")
