"""torch.compile and torch.export of whole networks: one graph, no recompiles across scan sizes,
outputs equal to eager, a compiled training step, an exported program reloaded in a fresh
process. The compiler backend is ``aot_eager`` (dynamo + AOT autograd, what decides graph breaks
and recompiles) so the suite stays fast; one slow test runs inductor."""

import copy
import subprocess
import sys
import textwrap

import pytest
import torch
from torch._dynamo.utils import counters

import sparseconv as sc

SIZES = ((2500, 1), (4000, 2), (6000, 3))


def _scan(n: int, seed: int, extent: int = 36) -> sc.SparseTensor:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.unique(torch.randint(0, extent, (n, 3), generator=g), dim=0)
    coords = torch.cat([torch.zeros(len(xyz), 1, dtype=torch.long), xyz], 1).int()
    return sc.SparseTensor(torch.randn(len(coords), 4, generator=g), coords)


def _points(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(n, 3, generator=g) * 2.5
    x, _ = sc.voxelize(pts, 0.05, torch.randn(n, 4, generator=g))
    return x, torch.cat([torch.zeros(n, 1), pts], 1)


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_minkunet_compiles_to_one_graph_without_recompiles(fresh_dynamo):
    torch.manual_seed(0)
    net = sc.models.MinkUNet(4, 19, width=0.25).eval()
    compiled = torch.compile(net, dynamic=True, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        for i, (n, seed) in enumerate(SIZES):
            got = compiled(_scan(n, seed))
            want = net(_scan(n, seed))
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            if i == 0:
                first = _graphs()
    assert first == 1 and _graphs() == 1, "a new scan size recompiled"
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_spvcnn_compiles_to_one_graph_without_recompiles(fresh_dynamo):
    torch.manual_seed(0)
    net = sc.models.SPVCNN(4, 19, width=0.25).eval()
    compiled = torch.compile(net, dynamic=True, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        for n, seed in SIZES:
            got = compiled(*_points(n, seed))
            want = net(*_points(n, seed))
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert _graphs() == 1 and not counters["graph_break"]


def test_a_compiled_training_step_matches_eager(fresh_dynamo):
    torch.manual_seed(0)
    net = sc.models.MinkUNet(4, 5, width=0.25)
    twin = copy.deepcopy(net)
    compiled = torch.compile(twin, dynamic=True, fullgraph=True, backend="aot_eager")
    opt_a = torch.optim.AdamW(net.parameters(), lr=1e-3)
    opt_b = torch.optim.AdamW(twin.parameters(), lr=1e-3)
    for n, seed in SIZES[:2]:
        labels = torch.randint(0, 5, (len(_scan(n, seed).coords),))
        for model, opt in ((net, opt_a), (compiled, opt_b)):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(_scan(n, seed)), labels)
            loss.backward()
            opt.step()
    for (name, a), b in zip(net.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    assert _graphs() <= 2  # forward + backward graph, not one per scan


def test_fake_kernels_agree_with_the_real_ones():
    """torch.library's own consistency check of every op (schema, fake kernel, autograd)."""
    from sparseconv.functional import ops

    x = _scan(300, 5, extent=10)
    nbmap = ops.submanifold_map(x.coords, [3, 3, 3], [1, 1, 1], [1, 1, 1])
    out_coords, down = ops.strided_map(x.coords, [2, 2, 2], [2, 2, 2], [1, 1, 1], [1, 1, 1],
                                       [0, 0, 0], "minkowski", [], False, False)  # fmt: skip
    feats = torch.randn(len(x.coords), 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(27, 3, 2, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(ops.conv, (feats, weight, nbmap, True))
    torch.library.opcheck(ops.submanifold_map, (x.coords, [3, 3, 3], [1, 1, 1], [1, 1, 1]))
    torch.library.opcheck(ops.transpose_map, (down, len(x.coords)))
    keys = sc.maps.keys.pack(x.coords)
    torch.library.opcheck(ops.lookup, (keys, keys.flip(0)))
    assert torch.equal(ops.lookup(keys, keys), torch.arange(len(keys), dtype=torch.int32))
    assert out_coords.shape[0] == down.shape[0]
    assert torch.autograd.gradcheck(lambda f, w: ops.conv(f, w, nbmap, True), (feats, weight))


def test_export_round_trips_through_a_fresh_process(tmp_path, fresh_dynamo):
    torch.manual_seed(0)
    net = sc.models.MinkUNet(4, 19, width=0.25).eval()
    voxels = torch.export.Dim("voxels", min=2)
    program = torch.export.export(net, (_scan(3000, 1),),
                                  dynamic_shapes=([{0: voxels}, {0: voxels}],))  # fmt: skip
    path = tmp_path / "minkunet.pt2"
    torch.export.save(program, path)
    x = _scan(5000, 7)
    torch.save({"feats": x.feats, "coords": x.coords}, tmp_path / "input.pt")
    with torch.no_grad():
        want = net(_scan(5000, 7))
    script = textwrap.dedent(f"""
        import torch
        import sparseconv as sc
        program = torch.export.load({str(path)!r})
        data = torch.load({str(tmp_path / "input.pt")!r})
        out = program.module()(sc.SparseTensor(data["feats"], data["coords"]))
        torch.save(out, {str(tmp_path / "out.pt")!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    got = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert {"sparseconv.strided_map.default", "sparseconv.conv.default",
            "sparseconv.transpose_map.default", "sparseconv.submanifold_map.default"} <= ops  # fmt: skip


@pytest.mark.slow
def test_inductor_compiles_minkunet(fresh_dynamo):
    torch.manual_seed(0)
    net = sc.models.MinkUNet(4, 19, width=0.25).eval()
    compiled = torch.compile(net, dynamic=True, fullgraph=True)
    with torch.no_grad():
        for n, seed in SIZES:
            torch.testing.assert_close(compiled(_scan(n, seed)), net(_scan(n, seed)),
                                       rtol=1e-5, atol=1e-5)  # fmt: skip
    assert _graphs() == 1
