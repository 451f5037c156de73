"""CUDA paths that have no CPU twin: the Triton hash table, the kernels at real-scan size,
half precision and a training step with AMP. Skipped without a GPU (see tests/conftest.py)."""

import pytest
import torch
from reference import assert_same_map, random_coords

import sparseconv as sc
from sparseconv.functional import conv3d
from sparseconv.maps import build_kernel_map

pytestmark = pytest.mark.gpu

MAP_CASES = [
    dict(kernel_size=k, stride=s, dilation=d, downsample_mode=m)
    for k in (1, 2, 3, 5)
    for s in (1, 2, 3)
    for d in (1, 2)
    for m in ("minkowski", "spconv")
    if not (s == 1 and m == "spconv")
]
FLOWS = ["torch", "triton_gather_scatter", "triton_implicit_gemm"]


@pytest.mark.parametrize("case", MAP_CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_cuda_hash_maps_equal_cpu_maps(case):
    coords = random_coords(400, extent=12, seed=len(str(case)))
    assert_same_map(
        build_kernel_map(coords.cuda(), method="hash", **case), build_kernel_map(coords, **case)
    )


def test_cuda_maps_on_real_scan(real_scan_points):
    x, _ = sc.voxelize(real_scan_points[:, :3], 0.05)
    for kwargs in (dict(kernel_size=3), dict(kernel_size=2, stride=2)):
        cpu = build_kernel_map(x.coords, **kwargs)
        for method in ("hash", "mergesort"):
            assert_same_map(build_kernel_map(x.coords.cuda(), method=method, **kwargs), cpu)


def _scan_case(points, c, layer, device="cpu"):
    """(input, weight, conv kwargs) for one layer of the bench table, built on ``device``."""
    x, _ = sc.voxelize(points[:, :3], 0.05)
    x = x.to(device)
    g = torch.Generator().manual_seed(c)
    if layer == "up":  # transposed k2s2 from the stride-2 tensor back to the scan
        fine = sc.SparseTensor(torch.zeros(len(x), 1, device=device), x.coords)
        down = conv3d(fine, torch.zeros(8, 1, 1, device=device), kernel_size=2, stride=2)
        x = down.replace_feats(torch.randn(len(down), c, generator=g).to(device))
    else:
        x = x.replace_feats(torch.randn(len(x), c, generator=g).to(device))
    k, kwargs = (3, {}) if layer == "subm" else (2, dict(stride=2, transposed=layer == "up"))
    w = torch.randn(k**3, c, c, generator=g) / (c * k**3) ** 0.5
    return x, w, dict(kernel_size=k, **kwargs)


@pytest.mark.parametrize("layer", ["subm", "down", "up"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3)])
def test_dataflows_on_real_scan_forward_and_backward(real_scan_points, layer, dtype, tol):
    x, w, kw = _scan_case(real_scan_points, 64, layer)
    ref_x = x.replace_feats(x.feats.double().requires_grad_(True))
    ref_w = w.double().requires_grad_(True)
    ref = conv3d(ref_x, ref_w, dataflow="torch", **kw)
    grad = torch.randn_like(ref.feats)
    rgx, rgw = torch.autograd.grad((ref.feats * grad).sum(), [ref_x.feats, ref_w])
    xc, _, _ = _scan_case(real_scan_points, 64, layer, "cuda")
    assert torch.equal(xc.coords.cpu(), x.coords)
    for flow in FLOWS:
        xf = xc.replace_feats(x.feats.to("cuda", dtype).requires_grad_(True))
        wf = w.to("cuda", dtype).requires_grad_(True)
        y = conv3d(xf, wf, dataflow=flow, **kw)
        gx, gw = torch.autograd.grad((y.feats * grad.to("cuda", dtype)).sum(), [xf.feats, wf])
        for got, want, name in ((y.feats, ref.feats, "y"), (gx, rgx, "dX"), (gw, rgw, "dW")):
            err = ((got.cpu().double() - want).norm() / want.norm()).item()
            assert err < tol, f"{flow} {name}: relative error {err:.2e}"


def test_autotuner_picks_and_caches_on_cuda(real_scan_points):
    from sparseconv.functional import dataflows

    x, w, kw = _scan_case(real_scan_points, 32, "subm", "cuda")
    w = w.cuda()
    dataflows.set_autotune(True)
    a = conv3d(x, w, **kw).feats
    assert len(dataflows.AUTOTUNE.choices) >= 1
    assert set(dataflows.AUTOTUNE.choices.values()) <= set(FLOWS)
    b = conv3d(x, w, dataflow="torch", **kw).feats
    assert ((a - b).norm() / b.norm()).item() < 1e-5


def test_minkunet_amp_training_step_and_fp32_agreement():
    from sparseconv.models import MinkUNet

    g = torch.Generator().manual_seed(0)
    pts = torch.rand(20000, 3, generator=g) * torch.tensor([20.0, 20.0, 3.0])
    x, _ = sc.voxelize(pts, 0.1, features=torch.cat([pts, torch.rand(20000, 1, generator=g)], 1))
    net = MinkUNet(4, 5, width=0.5).eval()
    with torch.no_grad():
        cpu = net(x)
        gpu = net.cuda()(x.to("cuda"))
    assert ((gpu.cpu() - cpu).norm() / cpu.norm()).item() < 1e-4
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    labels = torch.randint(0, 5, (len(x),), device="cuda")
    scaler = torch.amp.GradScaler("cuda")
    for _ in range(2):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = torch.nn.functional.cross_entropy(net(x.to("cuda")).float(), labels)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
