"""Folding BatchNorms that follow an activation (rsnet.deploy.fold): exact on the thesis
GoogLeNet with either BN, blocks with a non-positive scale made an exact per-channel affine,
and an int8 ONNX graph without float BatchNormalization islands or NCHW max-pools."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from torch import nn

from rsnet.deploy import export_onnx, quantize_int8
from rsnet.deploy.fold import ChannelAffine, ChannelShift, fold_post_activation_bn, post_activation_bn_blocks
from rsnet.models.googlenet_rs import googlenet_rs
from rsnet.models.layers import conv_bn_act
from test_prune import trained_looking

SMALL = {"conv1": 8, "conv2_reduce": 8, "conv2": 16, **{f"inception{k}": [4, 4, 4, 8, 4, 4] for k in
         ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")}}


def bn_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("bn_scale", [True, False])
def test_folding_the_thesis_googlenet_is_exact(bn_scale):
    """Its stem and inception 3a are conv -> ReLU -> BN -> ReLU: the 9 BNs there go, their
    outputs stay (with some shifts positive and some negative, both cases of the rewrite)."""
    torch.manual_seed(0)
    net = trained_looking(googlenet_rs(10, SMALL, input_size=64, bn_scale=bn_scale)).eval()
    folded = fold_post_activation_bn(net)
    assert folded is not net and bn_count(net) - bn_count(folded) == 9
    assert any(isinstance(m, ChannelShift) for m in folded.modules())
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        ref, got = net(x), folded(x)
    assert torch.allclose(ref, got, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    assert bn_count(net) == 57  # the original is untouched


def test_a_block_with_a_non_positive_scale_becomes_an_exact_per_channel_affine():
    """a * relu(z) != relu(a * z) where a < 0: not foldable; its BN becomes x * a + b (Mul,
    Add: int8 ops in ORT's NHWC graph, where a float BatchNormalization is not)."""
    block = trained_looking(conv_bn_act(3, 6, 3, padding=1, bias=True, pre_act=True)).eval()
    with torch.no_grad():
        block.bn.weight[2] = -0.5
    net = nn.Sequential(block)
    assert post_activation_bn_blocks(net) == [] and post_activation_bn_blocks(net, foldable=False) == [block]
    rewritten = fold_post_activation_bn(net)
    assert rewritten is not net and isinstance(rewritten[0].bn, ChannelAffine) and bn_count(rewritten) == 0
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(net(x), rewritten(x), atol=1e-5)
    assert isinstance(net[0].bn, nn.BatchNorm2d)  # the original is untouched


def test_a_bn_after_the_activation_without_a_relu_after_it_folds_exactly():
    block = trained_looking(conv_bn_act(3, 6, 3, padding=1, bias=False, pre_act=True)).eval()
    del block.act  # conv -> ReLU -> BN, its output may be negative
    folded = fold_post_activation_bn(block)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = block(x)
        assert (ref < 0).any()
        assert torch.allclose(ref, folded(x), atol=1e-5)
    assert [type(m) for m in folded.children()] == [nn.Conv2d, nn.ReLU, ChannelShift]


@pytest.mark.integration
def test_int8_graph_of_a_post_activation_bn_model_has_no_float_batchnorm(tmp_path, one_thread):
    """What ONNX Runtime runs (its optimised graph) for the int8 file: every BN folded away or
    made int8 Mul / Add, no BatchNormalization node left between quantized convolutions, and
    every max-pool in ORT's NHWC int8 kernel (after a float BN, the stem's pool and those of
    inception 3a / 3b ran as the generic NCHW kernel, most of a trained Psi's int8 time)."""
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    net = trained_looking(googlenet_rs(10, SMALL, input_size=64)).eval()
    with torch.no_grad():  # trained BNs have negative scales too: two blocks cannot be folded
        for block in post_activation_bn_blocks(net)[:2]:
            block.bn.weight[0] = -0.5
    fp32 = export_onnx(net, tmp_path / "g.onnx", 64)
    calib = [np.random.default_rng(i).standard_normal((8, 3, 64, 64), np.float32) for i in range(2)]
    int8 = quantize_int8(fp32, tmp_path / "g_int8.onnx", calib)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(int8), opts, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    assert ops["BatchNormalization"] == 0 and ops["QLinearConv"] == 57 and ops["QLinearMul"] == 2
    assert ops["MaxPool"] == 0 and ops["NhwcMaxPool"] == 13
    unfolded = export_onnx(net, tmp_path / "u.onnx", 64, fold=False)
    assert any(n.op_type == "BatchNormalization" for n in onnx.load(str(unfolded)).graph.node)
