"""ONNX: MinkUNet exported with its sparse ops as ``ai.onnx.contrib`` nodes, checked against
the registered schemas, run in onnxruntime in a fresh process, outputs equal to eager."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import sparseconv as sc

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime_extensions")


def _scan(n: int, seed: int) -> sc.SparseTensor:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.unique(torch.randint(0, 36, (n, 3), generator=g), dim=0)
    coords = torch.cat([torch.zeros(len(xyz), 1, dtype=torch.long), xyz], 1).int()
    return sc.SparseTensor(torch.randn(len(coords), 4, generator=g), coords)


def test_minkunet_exports_and_runs_in_onnxruntime(tmp_path):
    from sparseconv import onnx as sc_onnx

    torch.manual_seed(0)
    net = sc.models.MinkUNet(4, 19, width=0.25).eval()
    path = tmp_path / "minkunet.onnx"
    sc_onnx.export(net, _scan(2500, 1), path)
    model = onnx.load(path)
    domains = {(n.domain, n.op_type) for n in model.graph.node if n.domain}
    assert domains == {(sc_onnx.schema.DOMAIN, name) for name in
                       ("SparseConv", "SparseSubmanifoldMap", "SparseStridedMap",
                        "SparseTransposeMap")}  # fmt: skip
    sc_onnx.schema.register_schemas()
    onnx.checker.check_model(model, full_check=True)  # every node against its schema
    assert [i.name for i in model.graph.input] == ["x_feats", "x_coords"]

    x = _scan(4500, 9)  # another voxel count than the example's
    np.savez(tmp_path / "input.npz", feats=x.feats.numpy(), coords=x.coords.numpy())
    script = textwrap.dedent(f"""
        import numpy as np
        from sparseconv import onnx as sc_onnx
        data = np.load({str(tmp_path / "input.npz")!r})
        session = sc_onnx.session({str(path)!r})
        out = session.run(None, {{"x_feats": data["feats"], "x_coords": data["coords"]}})[0]
        np.save({str(tmp_path / "out.npy")!r}, out)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    with torch.no_grad():
        want = net(_scan(4500, 9)).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), want, rtol=1e-5, atol=1e-5)


def test_every_operator_round_trips_its_attributes():
    """Each table entry's ONNX attributes give back the torch op's arguments."""
    from sparseconv.onnx import schema

    coords = torch.zeros(1, 4, dtype=torch.int32)
    args = {
        "SparseSubmanifoldMap": (coords, [3, 3, 3], [1, 1, 2], [2, 2, 2]),
        "SparseStridedMap": (coords, [2, 3, 3], [2, 2, 1], [1, 1, 1], [1, 1, 1], [0, 1, 1],
                             "spconv", [], True, False),
        "SparseTransposeMap": (coords, 5),
        "SparseConv": (coords, coords, coords, True),
        "SparseLookup": (coords, coords),
    }  # fmt: skip
    for spec in schema.SPECS:
        inputs, attributes = spec.to_onnx(*args[spec.name])
        assert {n for n, _ in spec.attributes} == set(attributes), spec.name
        back = spec.to_torch(inputs, attributes)
        assert [a.tolist() if isinstance(a, torch.Tensor) else a for a in back] == [
            a.tolist() if isinstance(a, torch.Tensor) else a for a in args[spec.name]
        ], spec.name
