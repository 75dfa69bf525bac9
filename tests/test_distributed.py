"""Data-parallel training of PNNH models: two gloo processes on CPU, wrapped the way timm's train.py wraps.

timm's ``train.py`` cannot itself run DDP on CPU: it passes ``device_ids=[device]`` to
``DistributedDataParallel``, which PyTorch rejects for CPU modules. So this checks our side directly:
the model is built, optionally converted with timm's ``convert_sync_batchnorm`` (``--sync-bn``),
optimised with ``timm.optim.create_optimizer_v2`` and wrapped in DDP (without ``device_ids``, the
CPU form), and one SGD step on two ranks is compared with one step in a single process.

What equality holds (BatchNorm is where the two differ):

* BatchNorm in training mode: each rank normalises its half of the batch with that half's
  statistics, and DDP averages the two halves' gradients. The single-process equivalent runs the
  model on each half separately and averages the two losses.
* BatchNorm in eval mode (running statistics): the two ranks together are exactly one process on the
  joined batch.

``--sync-bn`` cannot be run here: DDP refuses to wrap SyncBatchNorm CPU modules ("SyncBatchNorm
layers only work with GPU modules") and SyncBatchNorm itself synchronises only GPU tensors. What is
checked instead is the conversion train.py applies: ``convert_sync_batchnorm`` replaces every
BatchNorm of a PNNH model (the coder's too, with ``coder_norm=True``), keeps its parameters and
statistics, and the converted model computes the same outputs.

The coder weight is used twice in each PNNH block's forward (encode and decode); DDP must reduce
its gradient once, after both uses have accumulated. After the step, the parameters must be bitwise
identical on both ranks, and every parameter's update must equal the single-process update to 0.1%
of its largest entry (float32 rounding of the summation order is far below that; a gradient that
missed a use, or a batch normalised the wrong way, is far above it).
"""
import socket

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import convert_sync_batchnorm
from timm.optim import create_optimizer_v2
from torch.nn.parallel import DistributedDataParallel

import timm_pnnh  # noqa: F401

WORLD = 2
PER_RANK = 4
NUM_CLASSES = 10
VIT = 'pnnh_vit_tiny_patch4_32'
MODELS = [
    'pnnh_resnet20',
    pytest.param(VIT, marks=pytest.mark.skipif(
        not timm.is_model(VIT), reason=f'{VIT} is not registered in this checkout (no PNNH ViT family yet)')),
]


def _model(name: str) -> nn.Module:
    """The same initial model in every process. Parameters initialised to all zeros (zero-init-last
    BatchNorm scales, zeroed output projections, biases) are drawn at random instead, so that every
    parameter -- the learners' layers too -- gets a gradient in the first step."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=NUM_CLASSES)
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.normal_(0.0, 0.1)
    return model


def _optimizer(model: nn.Module):
    # a large lr so that every parameter's update stands well above float32 rounding of the parameter
    return create_optimizer_v2(model, opt='sgd', lr=1.0, momentum=0.9, weight_decay=1e-4)


def _batch(name: str):
    g = torch.Generator().manual_seed(1)
    size = timm.create_model(name, num_classes=NUM_CLASSES).pretrained_cfg['input_size']
    return torch.randn(WORLD * PER_RANK, *size, generator=g), torch.randint(0, NUM_CLASSES, (WORLD * PER_RANK,), generator=g)


def _params(model: nn.Module):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _worker(rank: int, name: str, port: int, results: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=WORLD)
    try:
        x, y = _batch(name)
        part = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        out = {}
        for training in (True, False):
            model = _model(name).train(training)
            optimizer = _optimizer(model)
            ddp = DistributedDataParallel(model)  # train.py adds device_ids=[device] on GPUs
            loss = F.cross_entropy(ddp(x[part]), y[part])
            loss.backward()
            optimizer.step()
            out[training] = _params(model)
        torch.save(out, f'{results}/rank{rank}.pt')
    finally:
        dist.destroy_process_group()


def _single_process_step(name: str, training: bool):
    x, y = _batch(name)
    model = _model(name).train(training)
    optimizer = _optimizer(model)
    if not training:  # running statistics: one forward on the joined batch
        loss = F.cross_entropy(model(x), y)
    else:  # batch statistics: each half normalised with its own, as on its own rank
        halves = [slice(r * PER_RANK, (r + 1) * PER_RANK) for r in range(WORLD)]
        loss = sum(F.cross_entropy(model(x[h]), y[h]) for h in halves) / WORLD
    loss.backward()
    optimizer.step()
    return _params(model)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize('name', MODELS)
def test_ddp_step_matches_single_process(name, tmp_path):
    mp.spawn(_worker, args=(name, _free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in range(WORLD)]
    initial = _params(_model(name))
    if 'resnet' in name:
        assert sum(k.endswith('coder.weight') for k in initial) == 7  # 9 blocks less the 2 that downsample
    for training in (True, False):
        expected = _single_process_step(name, training)
        assert expected.keys() == ranks[0][training].keys() == ranks[1][training].keys()
        for key, value in expected.items():
            on_rank0, on_rank1 = ranks[0][training][key], ranks[1][training][key]
            assert torch.equal(on_rank0, on_rank1), f'{key} differs between ranks (training={training})'
            update = value - initial[key]
            scale = update.abs().max().item()
            assert scale > 0, f'{key} got no update (training={training})'
            torch.testing.assert_close(on_rank0 - initial[key], update, rtol=1e-3, atol=1e-3 * scale,
                                       msg=lambda m: f'{key} update (training={training}): {m}')


@pytest.mark.parametrize('name, kwargs', [('pnnh_resnet20', {}), ('pnnh_resnet20', {'coder_norm': True}),
                                          ('pnnh_resnet50', {})])
def test_sync_batchnorm_conversion(name, kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=NUM_CLASSES, **kwargs)
    size = model.pretrained_cfg['input_size']
    x = torch.randn(2, size[0], 64, 64)
    model.train()
    model(x)  # move the running statistics away from their initial values
    model.eval()
    batch_norms = {k for k, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    state, expected = model.state_dict(), model(x)
    converted = convert_sync_batchnorm(model).eval()
    sync_norms = {k for k, m in converted.named_modules() if isinstance(m, nn.SyncBatchNorm)}
    assert sync_norms == batch_norms and len(batch_norms) > 0
    if kwargs.get('coder_norm'):
        assert any(k.endswith('coder.norm') for k in sync_norms)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in converted.modules())
    torch.testing.assert_close(converted.state_dict(), state, rtol=0, atol=0)
    torch.testing.assert_close(converted(x), expected, rtol=0, atol=0)
