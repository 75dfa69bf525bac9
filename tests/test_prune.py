"""Pruning the hidden channels of folded PNNH blocks that carry nothing (timm_pnnh.prune)."""
import pytest
import timm
import torch
import torch.nn as nn

import timm_pnnh  # noqa: F401  (registers the models)
from timm_pnnh.models.pnnh_resnet import PnnhBasicBlock, PnnhBottleneck
from timm_pnnh.prune import folded_blocks, prune_dead_channels
from timm.utils.model import reparameterize_model


def randomise_norms(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.uniform_(0.2, 0.6, generator=g)
                m.bias.normal_(0, 0.1, generator=g)


def folded(block):
    torch.manual_seed(0)
    randomise_norms(block)
    block.eval().reparameterize()
    return block


@torch.no_grad()
def test_exact_rule_removes_unread_and_constant_zero_channels():
    block = folded(PnnhBasicBlock(8, 8, coder_kernel=3))
    x = torch.randn(2, 8, 6, 6).relu()
    block.plain.conv2.weight[:, 3] = 0  # a coder channel nobody reads
    block.plain.conv1.weight[12] = 0  # a learner channel that is constantly relu(-1) = 0
    block.plain.conv1.bias[12] = -1.0
    block.plain.conv1.weight[13] = 0  # constant relu(+1) = 1: it carries a constant, kept
    block.plain.conv1.bias[13] = 1.0
    ref = block(x)
    assert prune_dead_channels(block) == {'': [2]}
    assert (block.plain.conv1.out_channels, block.plain.conv2.in_channels) == (14, 14)
    torch.testing.assert_close(block(x), ref)


@torch.no_grad()
def test_calibration_removes_channels_silent_on_the_data():
    torch.manual_seed(0)
    model = timm.create_model('pnnh_resnet20').eval()
    randomise_norms(model)
    model = reparameterize_model(model)
    x = torch.randn(4, 3, 32, 32)
    plain = model.layer1[1].plain
    plain.conv1.bias[[0, 20]] = -1e4  # never positive on these images
    ref = model(x)
    untouched = prune_dead_channels(model)  # no data: nothing is exactly dead
    assert all(n == [0] for n in untouched.values())
    removed = prune_dead_channels(model, [x[:2], x[2:]])
    conv1 = model.layer1[1].plain.conv1
    assert removed['layer1.1'][0] >= 2 and conv1.out_channels == 32 - removed['layer1.1'][0]
    assert not (conv1.bias == -1e4).any()  # both silenced channels are gone
    assert (model(x) - ref).abs().max().item() <= 1e-5


@torch.no_grad()
def test_bottleneck_prunes_each_hidden_layer():
    block = folded(PnnhBottleneck(64, 16, coder_ratio=0.25))
    x = torch.randn(2, 64, 5, 5).relu()
    block.plain.conv2.weight[:, 1] = 0  # a coder channel after conv1
    block.plain.conv3.weight[:, 20] = 0  # a learner channel after conv2
    ref = block(x)
    # the middle conv passes coder channel 1 through a Dirac kernel: unread, it dies there too
    assert prune_dead_channels(block) == {'': [1, 2]}
    assert [m.out_channels for m in block.plain if isinstance(m, nn.Conv2d)] == [31, 30, 64]
    torch.testing.assert_close(block(x), ref)


def test_refuses_a_model_without_folded_blocks():
    with pytest.raises(ValueError, match='no folded PNNH blocks'):
        prune_dead_channels(timm.create_model('pnnh_resnet20'))
    assert folded_blocks(timm.create_model('cifar_resnet20')) == {}
