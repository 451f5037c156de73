"""The core installs and passes its core tests in a fresh venv without open3d and matplotlib."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE_TESTS = ["tests/maps", "tests/functional", "tests/nn", "tests/test_tensor_voxelize.py"]


@pytest.mark.slow
def test_core_install_without_optional_dependencies(tmp_path):
    venv = tmp_path / "core"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")

    def pip(*args):
        subprocess.run([py, "-m", "pip", "install", "-q", *args], check=True, cwd=ROOT)

    pip("torch==2.13.0")  # the CPU build (a range would fetch a CUDA one)
    pip(".", "pytest>=8")
    listed = subprocess.run([py, "-m", "pip", "list"], capture_output=True, text=True).stdout
    assert "open3d" not in listed.lower() and "matplotlib" not in listed.lower()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # run the tests against the installed package, not the checkout
    done = subprocess.run(
        [py, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
         *[str(ROOT / t) for t in CORE_TESTS]],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
