"""``coder_sharing='stage'`` survives every way a model is built, copied, loaded, traced or wrapped: each
stage's PNNH blocks use one registered Parameter (the stage's first PNNH block's), before and after an
optimizer step."""
import copy
import socket

import pytest
import timm
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from timm_pnnh.models.pnnh_resnet import _PnnhBlock

OWNERS = ('layer1.0.coder.weight', 'layer2.1.coder.weight', 'layer3.1.coder.weight')


def shared_model(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model('pnnh_resnet20', coder_sharing='stage', coder_init='kaiming', num_classes=10, **kwargs)


def assert_shared(model: torch.nn.Module) -> None:
    """Every PNNH block of a stage uses the Parameter registered by the stage's first one, and only that
    one is registered."""
    params = dict(model.named_parameters())
    assert [k for k in params if k.endswith('coder.weight')] == list(OWNERS)
    for stage, owner in zip(('layer1', 'layer2', 'layer3'), OWNERS):
        blocks = [b for b in model.get_submodule(stage) if isinstance(b, _PnnhBlock)]
        assert len(blocks) >= 2 and all(b.coder.weight is params[owner] for b in blocks), stage


def step(model: torch.nn.Module) -> None:
    """One SGD step: a coder used by several blocks stays one tensor if it is one Parameter."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    dtype = next(model.parameters()).dtype
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2)).to(dtype)
    model.train()(x).square().mean().backward()
    optimizer.step()


def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize('assign', [False, True])
def test_load_state_dict_keeps_the_stage_coder_shared(assign):
    source = shared_model()
    model = shared_model()
    model.load_state_dict({k: v.clone() for k, v in source.state_dict().items()}, assign=assign)
    assert_shared(model)
    step(model)
    assert_shared(model)
    torch.testing.assert_close(model.layer1[2].coder.weight, model.layer1[0].coder.weight)


def test_meta_device_then_to_empty_then_load():
    source = shared_model()
    with torch.device('meta'):
        model = timm.create_model('pnnh_resnet20', coder_sharing='stage', num_classes=10)
    model.to_empty(device='cpu')
    assert_shared(model)
    model.load_state_dict(source.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images()), source.eval()(images()))
    step(model)
    assert_shared(model)


def test_deepcopy_and_dtype_moves_keep_one_parameter_per_stage():
    model = shared_model()
    copied = copy.deepcopy(model)
    assert_shared(copied)
    assert copied.layer1[0].coder.weight is not model.layer1[0].coder.weight
    copied.double()
    assert_shared(copied)
    assert copied.layer1[1].coder.weight.dtype == torch.float64
    step(copied)
    assert_shared(copied)


def test_torch_fx_and_torchscript_use_the_registered_parameter():
    model = shared_model().eval()
    x = images()
    with torch.no_grad():
        expected = model(x)
        traced = torch.fx.symbolic_trace(model)
        coder_attrs = {n.target for n in traced.graph.nodes if n.op == 'get_attr' and n.target.endswith('coder.weight')}
        assert coder_attrs == set(OWNERS)  # the sharers read the owner's Parameter, not a copy
        torch.testing.assert_close(traced(x), expected)
        scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(x), expected)
        model.layer2[1].coder.weight.mul_(0.5)  # a change to the one Parameter reaches every block
        torch.testing.assert_close(scripted(x), model(x))
        assert not torch.allclose(model(x), expected)


def test_torch_export_computes_the_model_with_one_coder_parameter_per_stage():
    model = shared_model().eval()
    x = images()
    program = torch.export.export(model, (x,))
    assert [k for k in program.state_dict if k.endswith('coder.weight')] == list(OWNERS)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x))


def test_torch_export_reads_the_shared_coder_from_its_parameter():
    program = torch.export.export(shared_model().eval(), (images(),))
    assert not [v for v in program.constants.values() if isinstance(v, torch.Tensor) and v.dim() == 4]


def test_ddp_reduces_the_shared_coder_once_and_keeps_it_shared():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=0, world_size=1)
    try:
        model, reference = shared_model(), shared_model()
        wrapped = DistributedDataParallel(model)
        assert_shared(wrapped.module)
        step(wrapped)
        step(reference)
        assert_shared(model)
        for (name, got), want in zip(model.named_parameters(), reference.parameters()):
            torch.testing.assert_close(got, want, msg=name)
    finally:
        dist.destroy_process_group()
