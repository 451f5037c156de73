"""Every public entry point, walked with bad input: each call fails with a clear error that
names the argument (``match``), and nothing is left half-done (checked where state could change).

The number of cases is what the README's reliability table reports.
"""

from pathlib import Path

import pytest
import torch

import sparseconv as sc
from sparseconv.train.config import load_config

COORDS = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], dtype=torch.int32)
FEATS = torch.randn(3, 4)


def _x() -> sc.SparseTensor:
    return sc.SparseTensor(FEATS, COORDS)


def _points(batch: float) -> torch.Tensor:
    pts = torch.rand(10, 4)
    pts[:, 0] = batch
    return pts


def _ckpt(tmp: Path) -> Path:
    path = tmp / "bad.pt"
    path.write_bytes(b"garbage")
    return path


# (id, call, exception type, message pattern); calls taking ``tmp`` get a temp folder
CASES = [
    ("tensor feats rank", lambda: sc.SparseTensor(torch.randn(3), COORDS), ValueError, r"feats must have shape \[N, C\]"),
    ("tensor feats type", lambda: sc.SparseTensor([[1.0]], COORDS), TypeError, "feats must be a torch.Tensor"),
    ("tensor length", lambda: sc.SparseTensor(torch.randn(2, 4), COORDS), ValueError, "same length"),
    ("tensor coords dtype", lambda: sc.SparseTensor(FEATS, COORDS.long()), TypeError, "coords must be int32"),
    ("tensor coords shape", lambda: sc.SparseTensor(FEATS, COORDS[:, :3]), ValueError, r"coords must have shape \[N, 4\]"),
    ("tensor duplicates", lambda: sc.SparseTensor(FEATS, COORDS[[0, 0, 1]]), ValueError, "duplicate"),
    ("tensor batch range", lambda: sc.SparseTensor(FEATS, COORDS - torch.tensor([1, 0, 0, 0], dtype=torch.int32)), ValueError, "batch index must be in"),
    ("tensor coordinate range", lambda: sc.SparseTensor(FEATS, COORDS * 20000), ValueError, "x, y, z must be in"),
    ("tensor stride multiple", lambda: sc.SparseTensor(FEATS, COORDS, stride=2), ValueError, "multiples of the tensor stride"),
    ("replace_feats length", lambda: _x().replace_feats(torch.randn(2, 4)), ValueError, r"new feats must have shape \[3, C\]"),
    ("collate empty", lambda: sc.sparse_collate([]), ValueError, "at least one tensor"),
    ("collate strides", lambda: sc.sparse_collate([_x(), sc.SparseTensor(FEATS, COORDS * 2, stride=2)]), ValueError, "different strides"),
    ("voxelize points shape", lambda: sc.voxelize(torch.rand(5, 2)), ValueError, r"points must be a float tensor of shape \[N, 3\]"),
    ("voxelize points dtype", lambda: sc.voxelize(torch.ones(5, 3, dtype=torch.int64)), TypeError, "floating point"),
    ("voxelize voxel_size", lambda: sc.voxelize(torch.rand(5, 3), voxel_size=0.0), ValueError, "voxel_size must be positive"),
    ("voxelize reduce", lambda: sc.voxelize(torch.rand(5, 3), reduce="max"), ValueError, "reduce must be one of"),
    ("voxelize negative batch", lambda: sc.voxelize(_points(-1.0)), ValueError, r"batch index must be in \[0, 32767\]"),
    ("voxelize huge batch", lambda: sc.voxelize(_points(40000.0)), ValueError, r"batch index must be in \[0, 32767\]"),
    ("voxelize fractional batch", lambda: sc.voxelize(_points(0.5)), ValueError, "whole numbers"),
    ("voxelize features rows", lambda: sc.voxelize(torch.rand(5, 3), features=torch.rand(4, 2)), ValueError, "features has 4 rows"),
    ("voxelize range", lambda: sc.voxelize(torch.tensor([[0.0, 0, 0], [5000.0, 0, 0]]), voxel_size=0.01), ValueError, "use a larger voxel_size"),
    ("devoxelize mode", lambda: sc.devoxelize(_x(), torch.zeros(3, dtype=torch.long), mode="cubic"), ValueError, "mode must be one of"),
    ("devoxelize index range", lambda: sc.devoxelize(_x(), torch.tensor([0, 7])), ValueError, "p2v names voxel 7 but x has 3 voxels"),
    ("devoxelize index dtype", lambda: sc.devoxelize(_x(), torch.tensor([0.0])), ValueError, "p2v must be the integer"),
    ("devoxelize trilinear points", lambda: sc.devoxelize(_x(), None, mode="trilinear"), ValueError, "needs points and voxel_size"),
    ("maps kernel size", lambda: sc.maps.build_kernel_map(COORDS, 7), ValueError, "kernel_size must be at most 5"),
    ("maps method", lambda: sc.maps.build_kernel_map(COORDS, 3, method="octree"), ValueError, "method must be 'auto' or one of"),
    ("maps downsample mode", lambda: sc.maps.build_kernel_map(COORDS, 2, 2, downsample_mode="torchsparse"), ValueError, "downsample_mode must be one of"),
    ("maps stride zero", lambda: sc.maps.build_kernel_map(COORDS, 3, 0), ValueError, "stride"),
    ("maps transposed stride", lambda: sc.maps.build_kernel_map(COORDS, 2, 2, transposed=True), ValueError, "tensor stride divisible"),
    ("conv input type", lambda: sc.functional.conv3d(FEATS, torch.randn(27, 4, 8)), TypeError, "x must be a SparseTensor"),
    ("conv weight rank", lambda: sc.functional.conv3d(_x(), torch.randn(27, 4)), ValueError, r"weight must have shape \[K, Cin, Cout\]"),
    ("conv weight offsets", lambda: sc.functional.conv3d(_x(), torch.randn(8, 4, 8)), ValueError, "8 kernel offsets but the kernel .* has 27"),
    ("conv weight channels", lambda: sc.functional.conv3d(_x(), torch.randn(27, 5, 8)), ValueError, "expects 5 input channels but x has 4"),
    ("conv weight dtype", lambda: sc.functional.conv3d(_x(), torch.randn(27, 4, 8).double()), TypeError, "weight dtype"),
    ("conv bias shape", lambda: sc.functional.conv3d(_x(), torch.randn(27, 4, 8), bias=torch.randn(3)), ValueError, r"bias must have shape \[8\]"),
    ("conv dataflow name", lambda: sc.functional.conv3d(_x(), torch.randn(27, 4, 8), dataflow="bogus"), ValueError, "dataflow must be 'auto' or one of"),
    ("conv dataflow device", lambda: sc.functional.conv3d(_x().to(torch.float64), torch.randn(27, 4, 8).double(), dataflow="cpu_implicit_gemm"), ValueError, "cannot run here"),
    ("conv deterministic atomics", lambda: sc.functional.conv3d(_x(), torch.randn(27, 4, 8), dataflow="torch", deterministic=True), ValueError, "uses atomics"),
    ("layer channels", lambda: sc.nn.Conv3d(0, 8), ValueError, "in_channels must be a positive int"),
    ("layer dataflow", lambda: sc.nn.Conv3d(4, 8, dataflow="bogus"), ValueError, "dataflow must be 'auto' or one of"),
    ("layer kernel size", lambda: sc.nn.Conv3d(4, 8, kernel_size=(3, 3)), TypeError, "kernel_size must be an int or a tuple of 3"),
    ("model width", lambda: sc.models.MinkUNet(width=0), ValueError, "width must be > 0"),
    ("model blocks", lambda: sc.models.MinkUNet(blocks=(2, 2)), ValueError, "blocks must give 8 stage depths"),
    ("model widths list", lambda: sc.models.MinkUNet(widths=[8] * 4), ValueError, "widths must have 9 entries"),
    ("spvcnn without points", lambda: sc.models.SPVCNN(width=0.125)(_x()), TypeError, "points"),
    ("prune ratio", lambda: sc.prune.channel_prune(sc.models.MinkUNet(width=0.125), _x(), ratio=1.5), ValueError, r"ratio must be in \[0, 1\)"),
    ("prune ignore unknown", lambda: sc.prune.channel_prune(sc.models.MinkUNet(width=0.125), _x(), ratio=0.3, ignore=("stemm",)), ValueError, r"ignore names no layer of the model: \['stemm'\]"),
    ("prune ratios unknown", lambda: sc.prune.channel_prune(sc.models.MinkUNet(width=0.125), _x(), ratio=0.3, ratios={"encoder": 0.1}), ValueError, "ratios names no layer"),
    ("prune round_to", lambda: sc.prune.channel_prune(sc.models.MinkUNet(width=0.125), _x(), ratio=0.3, round_to=0), ValueError, "round_to must be a positive int"),
    ("nm ignore unknown", lambda: sc.prune.nm_prune(sc.models.MinkUNet(width=0.125), ignore=("nope",)), ValueError, r"ignore names no layer of the model: \['nope'\]"),
    ("prune load missing", lambda tmp: sc.prune.load(tmp / "none.npz"), FileNotFoundError, "not found"),
    ("prune load foreign", lambda tmp: sc.prune.load(_ckpt(tmp)), ValueError, "not a sparseconv pruned-model file"),
    ("config unknown key", lambda: load_config(None, ["lerning_rate=0.1"]), ValueError, "lerning_rate"),
    ("config lr", lambda: load_config(None, ["lr=0"]), ValueError, "'lr'"),
    ("config voxel_size", lambda: load_config(None, ["voxel_size=-1"]), ValueError, "'voxel_size'"),
    ("config width type", lambda: load_config(None, ["width=wide"]), ValueError, "'width' must be a number"),
    ("config steps", lambda: load_config(None, ["steps=0"]), ValueError, "'steps' must be >= 1"),
    ("config file missing", lambda tmp: load_config(tmp / "none.yaml"), FileNotFoundError, "config file not found"),
    ("checkpoint corrupt", lambda tmp: sc_checkpoint_load(_ckpt(tmp)), RuntimeError, "not a sparseconv checkpoint"),
    ("kitti root missing", lambda tmp: sc.datasets.SemanticKITTI(tmp / "none"), FileNotFoundError, "SemanticKITTI root not found"),
    ("nuscenes root missing", lambda tmp: sc.datasets.NuScenesLidarSeg(tmp / "none"), FileNotFoundError, "nuScenes root not found"),
    ("nuscenes no scans", lambda tmp: sc.datasets.NuScenesLidarSeg(tmp), FileNotFoundError, "no .pcd.bin scans"),
    ("nuscenes no metadata", lambda tmp: sc.datasets.NuScenesLidarSeg(_nuscenes_scan(tmp), require_labels=True), FileNotFoundError, "lidarseg metadata not found"),
    ("folder missing", lambda tmp: sc.datasets.PointCloudFolder(tmp / "none"), FileNotFoundError, "point cloud folder not found"),
    ("folder empty", lambda tmp: sc.datasets.PointCloudFolder(tmp), FileNotFoundError, r"no \.ply or \.pcd files"),
    ("scan truncated", lambda tmp: sc.datasets.io.read_bin_scan(_truncated(tmp)), ValueError, "truncated.bin"),
    ("confusion labels", lambda: _confusion().update(torch.tensor([0]), torch.tensor([19])), ValueError, "outside 0..18"),
    ("autotune pin", lambda: sc.functional.AUTOTUNE.pin("k", "nope"), ValueError, "unknown dataflow 'nope'"),
    ("thread policy", lambda: _threads().set_policy("greedy"), ValueError, "thread policy must be one of"),
]  # fmt: skip


def sc_checkpoint_load(path):
    from sparseconv.train.checkpoint import load_checkpoint

    return load_checkpoint(path)


def _nuscenes_scan(tmp: Path) -> Path:
    lidar = tmp / "samples" / "LIDAR_TOP"
    lidar.mkdir(parents=True)
    (lidar / "scan.pcd.bin").write_bytes(b"\0" * 20 * 4)
    return tmp


def _truncated(tmp: Path) -> Path:
    path = tmp / "truncated.bin"
    path.write_bytes(b"\0" * 10)
    return path


def _confusion():
    from sparseconv.train.metrics import ConfusionMatrix

    return ConfusionMatrix(19)


def _threads():
    from sparseconv.utils import threads

    return threads


@pytest.mark.parametrize("name,call,error,match", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error(name, call, error, match, tmp_path):
    takes_tmp = call.__code__.co_argcount == 1
    with pytest.raises(error, match=match):
        call(tmp_path) if takes_tmp else call()


def test_a_refused_prune_leaves_the_model_untouched():
    net = sc.models.MinkUNet(width=0.125)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for bad, match in ((dict(ratio=1.5), "ratio"), (dict(ratio=0.3, ignore=("stemm",)), "stemm")):
        with pytest.raises(ValueError, match=match):
            sc.prune.channel_prune(net, _x(), inplace=True, **bad)
    after = net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="nope"):
        sc.prune.nm_prune(net, ignore=("nope",))
    assert not any(hasattr(m, "weight_mask") for m in net.modules())  # no mask half-applied
