"""The training form of the PNNH blocks: summed branches, exact gradients, no per-step weight copy."""
import pytest
import torch
import torch.nn as nn
from timm.layers import GELU, DropPath
from torch.profiler import ProfilerActivity, profile

from timm_pnnh.models.pnnh_resnet import PnnhBasicBlock, PnnhBottleneck


def reference(block, x):
    """The block's equations written out of place (see the block docstrings)."""
    act = block.act1
    z = block.coder.encode(x)
    if isinstance(block, PnnhBasicBlock):
        coded = block.coder.decode(act(z.clone()))
        learned = block.drop_path(block.bn2(block.conv2(act(block.bn1(block.conv1(x))))))
    else:
        coded = block.coder.decode(act(act(z.clone()).clone()))
        learned = block.bn3(block.conv3(act(block.bn2(block.conv2(act(block.bn1(block.conv1(x))))))))
    return act(coded + learned)


@pytest.mark.parametrize('act_layer', [nn.ReLU, GELU])
@pytest.mark.parametrize('make', [
    lambda act: PnnhBasicBlock(8, 8, act_layer=act, drop_path=DropPath(0.5), coder_kernel=3, coder_norm=True),
    lambda act: PnnhBottleneck(32, 8, act_layer=act, coder_ratio=0.25),
], ids=['basic', 'bottleneck'])
def test_training_form_gradients_match_the_equations(make, act_layer):
    torch.manual_seed(0)
    block = make(act_layer).train()
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.0)  # undo zero_init_last so the learner contributes
    x = torch.randn(2, block.coder.weight.shape[1], 5, 5, requires_grad=True)
    grads = []
    for fn in (block, lambda t: reference(block, t)):
        torch.manual_seed(1)  # same DropPath mask
        out = fn(x)
        out.square().sum().backward()
        grads.append((out.detach(), x.grad.clone(), block.coder.weight.grad.clone(), block.conv1.weight.grad.clone()))
        x.grad = None
        block.zero_grad()
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want)


def test_training_step_does_not_copy_the_shared_coder_weight():
    torch.manual_seed(0)
    block = PnnhBasicBlock(16, 16, coder_kernel=3).train()
    x = torch.randn(4, 16, 8, 8)
    block(x).sum().backward()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        block(x).sum().backward()
    weight_shape = list(block.coder.weight.shape)
    copies = [e.key for e in prof.key_averages(group_by_input_shape=True)
              if e.key in ('aten::copy_', 'aten::clone', 'aten::contiguous', 'aten::_to_copy', 'aten::flip')
              and weight_shape in [list(s) for s in e.input_shapes]]
    convs = [e.count for e in prof.key_averages() if e.key == 'aten::convolution']
    assert convs == [4]  # encode, decode and the two learner convs
    assert copies == []
