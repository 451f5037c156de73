"""Inference epilogues: a conv's following batch norm and ReLU applied as it stores its output."""

import pytest
import torch
from reference import needs_cpu_kernels, random_coords

import sparseconv as sc
from sparseconv.functional import conv as conv_op
from sparseconv.functional import conv3d
from sparseconv.functional.epilogue import Epilogue
from sparseconv.kernels import cpu_implicit_gemm as kernels
from sparseconv.maps import build_kernel_map


@needs_cpu_kernels
@pytest.mark.parametrize("c_out", [1, 8, 24, 32, 40])
@pytest.mark.parametrize("terms", ["scale", "shift", "both", "relu only", "all"])
def test_the_kernels_epilogue_equals_the_same_steps_after_it(c_out, terms):
    torch.manual_seed(c_out)
    coords = random_coords(300, extent=10, seed=1)
    nbmap = build_kernel_map(coords, 3).nbmap
    src, w = torch.randn(len(coords), 5), torch.randn(27, 5, c_out)
    scale = torch.randn(c_out) if terms in ("scale", "both", "all") else None
    shift = torch.randn(c_out) if terms in ("shift", "both", "all") else None
    relu = terms in ("relu only", "all")
    got = kernels.implicit_gemm(src, w, nbmap, scale, shift, relu)
    want = Epilogue(scale, shift, relu).apply_(kernels.implicit_gemm(src, w, nbmap))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    if relu:
        assert (got >= 0).all() and (got == 0).any()
    with pytest.raises(ValueError, match="one value per output channel"):
        kernels.implicit_gemm(src, w, nbmap, torch.ones(c_out + 1))


@needs_cpu_kernels
@pytest.mark.parametrize("c_out", [8, 24])
def test_a_residual_is_added_before_the_relu(c_out):
    torch.manual_seed(1)
    coords = random_coords(300, extent=10, seed=1)
    nbmap = build_kernel_map(coords, 3).nbmap
    src, w = torch.randn(len(coords), 5), torch.randn(27, 5, c_out)
    scale, shift, res = torch.randn(c_out), torch.randn(c_out), torch.randn(len(coords), c_out)
    got = kernels.implicit_gemm(src, w, nbmap, scale, shift, True, res)
    want = torch.relu(kernels.implicit_gemm(src, w, nbmap) * scale + shift + res)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="residual must have shape"):
        kernels.implicit_gemm(src, w, nbmap, residual=res[1:])


@pytest.mark.parametrize("dataflow", ["torch", "cpu_implicit_gemm"])
@pytest.mark.parametrize("kernel_size,stride", [(3, 1), (1, 1), (2, 2)])
def test_conv3d_with_an_epilogue_equals_conv_bias_norm_relu(dataflow, kernel_size, stride):
    if dataflow == "cpu_implicit_gemm" and not kernels.available():
        pytest.skip("no C compiler")
    torch.manual_seed(0)
    coords = random_coords(200, extent=10, seed=2)
    x = sc.SparseTensor(torch.randn(len(coords), 6), coords)
    volume = kernel_size**3
    w, bias = torch.randn(volume, 6, 24), torch.randn(24)
    ep = Epilogue(torch.rand(24) + 0.5, torch.randn(24), relu=True)
    args = dict(kernel_size=kernel_size, stride=stride, dataflow=dataflow)
    with torch.no_grad():
        fused = conv3d(x, w, bias, **args, epilogue=ep)
        plain = conv3d(sc.SparseTensor(x.feats, coords), w, bias, **args)
    torch.testing.assert_close(fused.feats, torch.relu(plain.feats * ep.scale + ep.shift))
    assert torch.equal(fused.coords, plain.coords)


def test_an_epilogue_refuses_autograd():
    coords = random_coords(50, seed=3)
    x = sc.SparseTensor(torch.randn(len(coords), 4), coords)
    w = torch.randn(27, 4, 3, requires_grad=True)
    with pytest.raises(ValueError, match="inference"):
        conv3d(x, w, epilogue=Epilogue(relu=True))


def _unfused(model):
    """The same model with a hook on every conv: Sequential then runs each step on its own."""
    for m in model.modules():
        if isinstance(m, sc.nn.Conv3d):
            m.register_forward_hook(lambda *args: None)
    return model


@pytest.mark.parametrize("model_cls", [sc.models.MinkUNet, sc.models.SPVCNN])
def test_fused_inference_equals_each_step_on_its_own(model_cls, monkeypatch):
    """A trained-looking network (random running statistics): the fused inference path of every
    conv -> batch norm -> ReLU equals running the three steps one after another."""
    torch.manual_seed(0)
    net = model_cls(4, 5, width=0.25)
    for m in net.modules():
        if isinstance(m, sc.nn.BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    reference = _unfused(__import__("copy").deepcopy(net))
    coords = random_coords(1500, extent=24, seed=4)
    feats = torch.randn(len(coords), 4)
    if model_cls is sc.models.SPVCNN:
        points = torch.cat([coords[:, :1].float(), coords[:, 1:].float() * 0.1 + 0.05], 1)
        example = lambda: (sc.SparseTensor(feats, coords), points, 0.1)  # noqa: E731
    else:
        example = lambda: (sc.SparseTensor(feats, coords),)  # noqa: E731
    calls = []
    original = conv_op.fused_forward
    monkeypatch.setattr(conv_op, "fused_forward", lambda *a: calls.append(1) or original(*a))
    with torch.no_grad():
        plain = reference(*example())
        assert not calls
        fused = net(*example())
    convs = sum(isinstance(m, sc.nn.Conv3d) for m in net.modules())
    assert len(calls) == convs  # every conv of these networks is followed by a batch norm
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)


def test_a_norms_folded_epilogue_follows_its_statistics_and_parameters():
    """The folded affine map is kept between inference calls, never past a change."""
    torch.manual_seed(0)
    bn = sc.nn.BatchNorm(6).eval()
    feats = torch.randn(50, 6)

    def folded_equals_torch():
        with torch.no_grad():
            want = torch.nn.functional.batch_norm(
                feats, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps
            )
            torch.testing.assert_close(bn.epilogue().apply_(feats.clone()), want)

    folded_equals_torch()
    with torch.no_grad():
        assert bn.epilogue().scale is bn.epilogue().scale  # kept
        bn.running_mean.add_(1.0)  # in place (a training step, load_state_dict)
    folded_equals_torch()
    with torch.no_grad():
        bn.weight.mul_(3.0)
    folded_equals_torch()
    bn.running_var = torch.rand(6) + 0.5  # a new tensor
    folded_equals_torch()
    bn.eps = 0.1
    folded_equals_torch()
