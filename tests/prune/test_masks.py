"""N:M and fine-grained masks: structure, persistence through fine-tuning, export, errors."""

import pytest
import torch
from prune_helpers import SkipNet, mse_loss, run, scene

import sparseconv as sc


def _nonzeros_per_group(w, m):
    w = w.detach().movedim(1, -1)
    return (w.reshape(*w.shape[:-1], -1, m) != 0).sum(-1)


def test_two_four_exact_before_and_after_finetuning():
    x, _ = scene(1500)
    net = SkipNet(c_in=3)
    x3 = x.replace_feats(x.feats[:, :3])
    with pytest.warns(UserWarning, match="skipped 1 layers"):
        report = sc.prune.nm_prune(net, n=2, m=4)
    assert report.skipped == {"stem.0": "input channels 3 not a multiple of 4"}
    assert "stem.0" in str(report) and len(report.pruned) == 5
    modules = dict(net.named_modules())
    for name in report.pruned:
        assert (_nonzeros_per_group(modules[name].weight, 4) == 2).all(), name
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.01)
    for _ in range(3):
        opt.zero_grad()
        mse_loss(net, x3).backward()
        opt.step()
    for name in report.pruned:
        assert (_nonzeros_per_group(modules[name].weight, 4) == 2).all(), name
    assert all(sc.prune.check_nm(net).values())


def test_nm_export_roundtrip_and_mask_choice():
    net = SkipNet()
    sc.prune.nm_prune(net, n=1, m=4)
    packed = sc.prune.export_nm(net)
    w = net.mix[0].weight.detach()
    p = packed["mix.0"]
    assert p["values"].shape == (27, 32 // 4, 16) and p["indices"].dtype == torch.uint8
    torch.testing.assert_close(sc.prune.decompress_nm(p["values"], p["indices"], 1, 4), w)
    # the kept weight of each group is the largest in magnitude (default importance l1)
    dense = SkipNet()
    groups = dense.mix[0].weight.detach().abs().movedim(1, -1).reshape(27, 16, 8, 4)
    sc.prune.nm_prune(dense, n=1, m=4)
    kept = dense.mix[0].weight.detach().abs().movedim(1, -1).reshape(27, 16, 8, 4).amax(-1)
    torch.testing.assert_close(kept, groups.amax(-1))


def test_nm_bad_arguments():
    net = SkipNet()
    with pytest.raises(ValueError, match="n .*< m"):
        sc.prune.nm_prune(net, n=4, m=4)
    with pytest.raises(ValueError, match="positive"):
        sc.prune.nm_prune(net, n=0, m=4)
    with pytest.raises(ValueError, match="scores channels"):
        sc.prune.nm_prune(net, importance="bn_scale")


def test_fine_grained_layer_and_global(tmp_path):
    x, _ = scene(1500)
    net = SkipNet()
    reached = sc.prune.fine_grained_prune(net, 0.7)
    assert all(abs(s - 0.7) < 0.02 for s in reached.values())  # head: 48 weights
    net2 = SkipNet()
    reached = sc.prune.fine_grained_prune(net2, 0.7, scope="global")
    total = sum(m.weight.numel() for m in sc.prune.masked_layers(net2).values())
    zeros = sum((m.weight == 0).sum().item() for m in sc.prune.masked_layers(net2).values())
    assert abs(zeros / total - 0.7) < 0.01
    assert max(reached.values()) - min(reached.values()) > 0.05  # global: uneven per layer
    sc.prune.save(net2, tmp_path / "f.npz")
    again = sc.prune.load(tmp_path / "f.npz", model=SkipNet())
    assert set(sc.prune.masked_layers(again)) == set(sc.prune.masked_layers(net2))
    torch.testing.assert_close(run(again.eval(), x), run(net2.eval(), x))
    with pytest.raises(ValueError, match="sparsity"):
        sc.prune.fine_grained_prune(net, 1.0)
    sc.prune.remove_mask(net.mix[0])
    assert not hasattr(net.mix[0], "weight_mask")


def test_nm_keep_ends_leaves_first_and_last_layers_dense():
    import warnings

    from sparseconv.models import MinkUNet
    from sparseconv.train.pruning import parse_spec

    net = MinkUNet(4, 5, width=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # kept-dense layers are a choice, not a warning
        report = sc.prune.nm_prune(net, 2, 4, keep_ends=True)
    assert set(report.skipped) == {"stem.0.0", "classifier"}
    assert (net.stem[0][0].weight != 0).all() and (net.classifier.weight != 0).all()
    assert "stem.1.0" in report.pruned
    spec = parse_spec("nm:2:4:ends")
    assert spec.keep_ends and spec.label == "2:4 l1 ends dense"
    with pytest.raises(ValueError, match="bad variant"):
        parse_spec("nm:2:4:middle")
