"""Dataset readers: real scans, label mapping, bad input, PLY folders, synthetic round trip."""

import numpy as np
import pytest
import torch

from sparseconv import datasets
from sparseconv.datasets.io import read_bin_scan, read_label_file


@pytest.mark.parametrize("seq", ["08", "00"])
def test_semantickitti_label_histogram_matches_raw(kitti_root, seq):
    ds = datasets.SemanticKITTI(kitti_root, sequences=(seq,))
    lut = datasets.semantickitti_learning_map()
    raw_ids_seen = set()
    for i in range(len(ds)):
        points, labels = ds.load(i)
        assert points.shape[1] == 4 and points.dtype == np.float32
        raw = np.fromfile(ds.label_path(i), dtype=np.uint32) & 0xFFFF
        raw_ids_seen |= set(np.unique(raw).tolist())
        for cls in range(ds.num_classes):
            assert (labels == cls).sum() == np.isin(raw, np.flatnonzero(lut == cls)).sum()
        assert (labels == datasets.IGNORE_INDEX).sum() == (lut[raw] == datasets.IGNORE_INDEX).sum()
    if seq == "00":  # lane-marking -> road, moving-motorcyclist -> motorcyclist
        assert {60, 255} <= raw_ids_seen
        assert lut[60] == datasets.SEMANTICKITTI_CLASSES.index("road")
        assert lut[255] == datasets.SEMANTICKITTI_CLASSES.index("motorcyclist")


def test_learning_map_matches_issue_table():
    lut = datasets.semantickitti_learning_map()
    name = {
        raw: datasets.SEMANTICKITTI_CLASSES[lut[raw]]
        for raw in np.flatnonzero(lut != datasets.IGNORE_INDEX)
    }
    assert name[252] == "car" and name[258] == "truck" and name[259] == "other-vehicle"
    assert name[253] == "bicyclist" and name[254] == "person" and name[49] == "other-ground"
    assert len(name) == 30 and lut[0] == lut[1] == lut[52] == lut[99] == datasets.IGNORE_INDEX


def test_official_splits_and_sample(kitti_root):
    assert datasets.SPLITS["val"] == ("08",) and "08" not in datasets.SPLITS["train"]
    assert datasets.SPLITS["test"][0] == "11" and datasets.SPLITS["test"][-1] == "21"
    val = datasets.SemanticKITTI(kitti_root, "val", voxel_size=0.05)
    s = val[0]
    assert 85_000 < len(s.coords) < 100_000 and len(s.points) == 123_389
    assert bool((s.p2v >= 0).all())
    # every voxel's label is the majority of its points' labels
    labelled = s.p2v[s.point_labels != datasets.IGNORE_INDEX]
    for v in labelled[:: max(1, len(labelled) // 50)].unique().tolist():  # 50 labelled voxels
        pts = s.point_labels[s.p2v == v]
        pts = pts[pts != datasets.IGNORE_INDEX]
        assert len(pts) and (pts == s.voxel_labels[v]).sum() == torch.bincount(pts).max()


def test_nuscenes_reader(kitti_root):
    root = kitti_root.parent / "nuscenes"
    if not root.is_dir():
        pytest.skip("nuScenes sample not available")
    ds = datasets.NuScenesLidarSeg(root)
    points, labels = ds.load(0)
    assert points.shape == (34_688, 4) and points[:, 3].min() >= 0 and points[:, 3].max() <= 1
    assert (labels == datasets.IGNORE_INDEX).all()  # the sample ships without lidarseg labels
    lut = datasets.nuscenes_learning_map()
    assert (
        datasets.NUSCENES_CLASSES[lut[17]] == "car"
        and datasets.NUSCENES_CLASSES[lut[2]] == "pedestrian"
    )
    assert lut[0] == lut[31] == datasets.IGNORE_INDEX and len(datasets.NUSCENES_CLASSES) == 16


def test_nuscenes_labels_through_metadata(tmp_path):
    import json

    root = tmp_path / "nus"
    (root / "samples" / "LIDAR_TOP").mkdir(parents=True)
    pts = np.random.default_rng(0).normal(size=(10, 5)).astype(np.float32)
    pts.tofile(root / "samples" / "LIDAR_TOP" / "a.pcd.bin")
    (root / "lidarseg" / "v1.0-mini").mkdir(parents=True)
    np.array([17, 0, 24, 2, 31, 9, 30, 28, 26, 27], np.uint8).tofile(
        root / "lidarseg" / "v1.0-mini" / "t1_lidarseg.bin"
    )
    (root / "v1.0-mini").mkdir()
    (root / "v1.0-mini" / "sample_data.json").write_text(
        json.dumps([{"token": "t1", "filename": "samples/LIDAR_TOP/a.pcd.bin"}])
    )
    (root / "v1.0-mini" / "lidarseg.json").write_text(
        json.dumps(
            [
                {
                    "token": "x",
                    "sample_data_token": "t1",
                    "filename": "lidarseg/v1.0-mini/t1_lidarseg.bin",
                }
            ]
        )
    )
    _, labels = datasets.NuScenesLidarSeg(root, version="v1.0-mini").load(0)
    names = [datasets.NUSCENES_CLASSES[c] if c != datasets.IGNORE_INDEX else None for c in labels]
    assert names[:4] == ["car", None, "driveable_surface", "pedestrian"] and names[4] is None


def test_bad_inputs_name_the_file(tmp_path, tiny_kitti):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\0" * 20)
    with pytest.raises(ValueError, match="bad.bin.*multiple of 16"):
        read_bin_scan(bad)
    lab = tmp_path / "x.label"
    np.zeros(7, np.uint32).tofile(lab)
    with pytest.raises(ValueError, match="x.label.*8 points"):
        read_label_file(lab, 8)
    with pytest.raises(ValueError, match="unknown split 'tain'"):
        datasets.SemanticKITTI(tiny_kitti, "tain")
    with pytest.raises(FileNotFoundError, match="root not found"):
        datasets.SemanticKITTI(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no scans for split 'test'"):
        datasets.SemanticKITTI(tiny_kitti, "test")
    # a label file shorter than its scan is caught when the scan is read
    scan = tiny_kitti / "sequences" / "00" / "labels" / "000000.label"
    scan.write_bytes(scan.read_bytes()[:-4])
    with pytest.raises(ValueError, match="000000.label"):
        datasets.SemanticKITTI(tiny_kitti, "train")[0]


def test_ply_folder_with_labels(tmp_path):
    import open3d as o3d

    pc = o3d.t.geometry.PointCloud()
    xyz = np.random.default_rng(1).uniform(0, 5, (200, 3)).astype(np.float32)
    pc.point.positions = o3d.core.Tensor(xyz)
    pc.point.intensity = o3d.core.Tensor(np.full((200, 1), 0.5, np.float32))
    pc.point.label = o3d.core.Tensor(np.arange(200, dtype=np.int32).reshape(-1, 1) % 3)
    o3d.t.io.write_point_cloud(str(tmp_path / "a.ply"), pc)
    ds = datasets.PointCloudFolder(tmp_path, num_classes=3, voxel_size=0.5)
    points, labels = ds.load(0)
    np.testing.assert_allclose(points[:, :3], xyz, rtol=1e-6)
    assert (points[:, 3] == 0.5).all() and (labels == np.arange(200) % 3).all()
    s = ds[0]
    assert s.voxel_labels.max() < 3 and len(s.points) == 200
    unlabelled = datasets.PointCloudFolder(tmp_path, label_field="missing")
    assert (unlabelled.load(0)[1] == datasets.IGNORE_INDEX).all()


def test_transforms_and_voxel_cap():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-60, 60, (5000, 4)).astype(np.float32)
    r0 = np.hypot(pts[:, 0], pts[:, 1])
    rot, _ = datasets.RandomRotateZ()(pts, rng)
    np.testing.assert_allclose(np.hypot(rot[:, 0], rot[:, 1]), r0, rtol=1e-5)
    _, keep = datasets.RangeCrop(50.0)(pts, rng)
    assert (keep == (r0 <= 50)).all()
    labels = np.zeros(5000, np.int64)
    s = datasets.voxelize_sample(pts, labels, 1.0, max_voxels=1000, rng=rng)
    assert len(s.coords) == 1000 and int(s.p2v.max()) == 999
    kept = s.p2v >= 0
    assert 0 < int(kept.sum()) < 5000
    with pytest.raises(ValueError, match="scale range must satisfy 0 < low <= high"):
        datasets.RandomScale(1.2, 1.0)


def test_collate_offsets_inverse_map(tiny_kitti):
    ds = datasets.SemanticKITTI(tiny_kitti, "train", voxel_size=0.5)
    a, b = ds[0], ds[1]
    batch = datasets.collate([a, b])
    assert batch.x.batch_size == 2 and len(batch.points) == len(a.points) + len(b.points)
    second = batch.p2v[len(a.points) :]
    assert int(second.min()) == len(a.coords)
    # the inverse map sends each point to a voxel holding it
    vox = batch.x.coords[batch.p2v].long()
    grid = torch.floor(batch.points[:, 1:] / 0.5).long()
    assert torch.equal(vox[:, 1:], grid) and torch.equal(vox[:, 0], batch.points[:, 0].long())


def test_synthetic_written_in_semantickitti_format(tmp_path):
    cfg = datasets.SceneConfig(azimuth_steps=256)
    datasets.write_synthetic_dataset(tmp_path, train_scans=1, val_scans=1, cfg=cfg, progress=False)
    val = datasets.SemanticKITTI(tmp_path, "val")
    points, labels = val.load(0)
    assert len(points) > 5000 and set(np.unique(labels)) <= set(range(19))
    expected = datasets.synthesize_scan(100_000 * 0 + 1, cfg)  # val scan 0 = dataset scan 1
    np.testing.assert_array_equal(points, expected[0])
    # deterministic per seed, different across seeds
    assert np.array_equal(datasets.synthesize_scan(5, cfg)[0], datasets.synthesize_scan(5, cfg)[0])
    assert not np.array_equal(
        datasets.synthesize_scan(5, cfg)[0][:100], datasets.synthesize_scan(6, cfg)[0][:100]
    )
