"""The README is a user's page: its API block runs, its links resolve, and it stays short.
``import sparseconv`` stays light: no tools, no optional dependencies."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import sparseconv as sc

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_readme_api_block_runs():
    block = re.findall(r"```python\n(.*?)```", README, re.S)[0]
    scope: dict = {}
    exec(compile(block, "README.md (API)", "exec"), scope)
    assert scope["per_point"].shape == (20_000, 32)
    assert scope["y"].feats.shape[1] == 8
    params = [sum(p.numel() for p in scope[m].parameters()) for m in ("small", "net")]
    assert 0 < params[0] < params[1]  # channel pruning made a smaller copy


def test_readme_is_short_and_stays_inside_the_repository():
    assert len(README.splitlines()) <= 250
    assert "../" not in README
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
    for doc in (ROOT / "docs").glob("*.md"):
        assert "../shared" not in doc.read_text(), doc.name


def test_readme_cli_commands_exist():
    from sparseconv.cli import build_parser

    parser = build_parser()
    for line in re.findall(r"^sparseconv ([a-z]+)", README, re.M):
        assert line in parser._subparsers._group_actions[0].choices, line


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd="/"
    )


def test_import_sparseconv_loads_no_tools_and_no_optional_dependencies():
    done = _fresh_python(
        """
        import sys, torch
        before = set(sys.modules)
        import sparseconv
        added = set(sys.modules) - before
        banned = ("sparseconv.bench", "sparseconv.train", "sparseconv.cli", "tqdm",
                  "matplotlib", "open3d")
        print(sorted(m for m in added if m.startswith(banned)))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_datasets_is_an_attribute_loaded_on_first_use():
    assert sc.datasets.SemanticKITTI is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sc.nope  # noqa: B018


def test_core_works_without_open3d_and_matplotlib_and_says_how_to_get_them():
    done = _fresh_python(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("open3d", "matplotlib"):
                    raise ImportError(f"blocked {name}")
        sys.meta_path.insert(0, Block())
        import torch, sparseconv as sc
        x, _ = sc.voxelize(torch.rand(2000, 3) * 5, 0.1)
        x = sc.SparseTensor(torch.randn(len(x), 4), x.coords)
        assert sc.nn.Conv3d(4, 8, 3)(x).feats.shape == (len(x), 8)
        for call in (lambda: sc.datasets.synthesize_scan(0),
                     lambda: sc.datasets.io.read_point_cloud_file("x.ply")):
            try:
                call()
            except ImportError as err:
                print(err)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "needs open3d, which is not installed: pip install 'sparseconv[lidar]'" in done.stdout
    assert done.stdout.count("sparseconv[lidar]") == 2
