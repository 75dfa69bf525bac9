"""Structure of the PNNH blocks read off the built models: plain, weight-shared, counted, coder-first."""
import pytest
import timm
import torch
import torch.fx
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import timm_pnnh  # noqa: F401
from timm_pnnh.models.pnnh_resnet import PnnhBasicBlock, PnnhBottleneck
from timm_pnnh.models.resnet_blocks import PlainBasicBlock

PNNH_NAMES = timm.list_models('pnnh_resnet*')
KNOB_VARIANTS = [
    {},
    dict(coder_ratio=0.5, learner_ratio=0.5),
    dict(coder_kernel=3, coder_init='kaiming'),
    dict(coder_norm=True, coder_init='orthogonal'),
]


def pnnh_blocks(model):
    return [m for m in model.modules() if isinstance(m, (PnnhBasicBlock, PnnhBottleneck))]


def closed_form_params(block, coder_ratio, learner_ratio, coder_kernel, coder_norm):
    """The counts written in the PnnhBasicBlock / PnnhBottleneck docstrings."""
    if isinstance(block, PnnhBasicBlock):
        c = block.conv2.out_channels
        cc, cl = int(coder_ratio * c), int(learner_ratio * c)
        return coder_kernel ** 2 * cc * c + 9 * c * cl + 9 * cl * c + 2 * cl + 2 * c + (2 * cc if coder_norm else 0)
    c = block.conv3.out_channels
    w = int(learner_ratio * c // 4)
    cc = int(coder_ratio * c)
    return coder_kernel ** 2 * cc * c + c * w + 9 * w * w + w * c + 4 * w + 2 * c + (2 * cc if coder_norm else 0)


@pytest.mark.parametrize('name', PNNH_NAMES)
def test_no_add_takes_a_stride1_block_input(name):
    model = timm.create_model(name)
    blocks = pnnh_blocks(model)
    assert blocks, f'{name} has no PNNH block'
    for block in blocks[:3]:
        graph = torch.fx.symbolic_trace(block).graph
        (inp,) = [n for n in graph.nodes if n.op == 'placeholder']
        adds = [n for n in graph.nodes if n.target in (torch.add, torch.Tensor.add, '__add__', 'add', 'add_', '__iadd__')
                or getattr(n.target, '__name__', '') in ('add', 'iadd', 'add_')]
        assert adds, 'expected the coder + learner sum'
        for node in adds:
            assert inp not in node.args, f'{name}: an add takes the block input as an operand'


def _coder_weights_in_a_step(block, grad=True):
    """One forward and backward of ``block``: the weight tensors conv2d / conv_transpose2d receive, and
    every tensor of the coder weight's shape that an operation makes (references kept, so that no
    address is reused and ``is`` compares tensors, not addresses)."""
    weight = block.coder.weight
    used, made = {}, []

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in (F.conv2d, F.conv_transpose2d) and args[1].dim() == 4:
                used.setdefault(func.__name__, []).append(args[1])
            if isinstance(out, torch.Tensor) and out.shape == weight.shape and out is not weight:
                made.append(out)
            return out

    x = torch.relu(torch.randn(1, weight.shape[1], 8, 8))
    with Record(), torch.set_grad_enabled(grad):
        out = block(x)
    if grad:
        out.sum().backward()
    return used, made


@pytest.mark.parametrize('name', ['pnnh_resnet20', 'pnnh_resnet50'])
@pytest.mark.parametrize('grad', [True, False])
def test_decoder_runs_on_the_encoders_tensor(name, grad):
    """conv2d (encoder) and conv_transpose2d (decoder) receive the very same weight tensor. With
    ``coder_lr_scale`` = s < 1 that tensor is ``sqrt(s) * weight``, made once per step (the one
    weight-sized tensor a step makes); with s = 1 it is the Parameter itself and no copy is made."""
    block = pnnh_blocks(timm.create_model(name))[0]
    assert sum(p is block.coder.weight for p in block.parameters()) == 1
    used, made = _coder_weights_in_a_step(block, grad)
    (decoder,) = used['conv_transpose2d']
    assert any(decoder is w for w in used['conv2d'])  # encoder and decoder: one tensor
    assert len(made) == 1 and made[0] is decoder
    torch.testing.assert_close(decoder, block.coder.weight * block.coder.gain)
    unscaled = pnnh_blocks(timm.create_model(name, coder_lr_scale=1.0))[0]
    used, made = _coder_weights_in_a_step(unscaled, grad)
    assert len(used['conv_transpose2d']) == 1 and used['conv_transpose2d'][0] is unscaled.coder.weight
    assert any(w is unscaled.coder.weight for w in used['conv2d'])
    assert made == []  # no copy of the coder weight


@pytest.mark.parametrize('lr_scale', [1.0, 0.1, 0.01])
def test_coder_lr_scale_scales_the_sgd_step_of_the_coder_only(lr_scale):
    torch.manual_seed(0)
    x = torch.relu(torch.randn(4, 16, 8, 8))
    steps = {}
    for scale in (1.0, lr_scale):
        torch.manual_seed(1)
        block = PnnhBasicBlock(16, 16, coder_init='kaiming', coder_lr_scale=scale)
        torch.testing.assert_close(block.coder.kernel(), steps.get('kernel', block.coder.kernel()))  # same E
        steps['kernel'] = block.coder.kernel().detach().clone()
        before = block.coder.kernel().detach().clone(), block.conv1.weight.detach().clone()
        optimizer = torch.optim.SGD(block.parameters(), lr=0.1)
        block(x).square().mean().backward()
        optimizer.step()
        steps[scale] = (block.coder.kernel().detach() - before[0], block.conv1.weight.detach() - before[1])
    torch.testing.assert_close(steps[lr_scale][0], lr_scale * steps[1.0][0], rtol=1e-3, atol=1e-6)  # float32 rounding of E = gain * (E / gain)
    torch.testing.assert_close(steps[lr_scale][1], steps[1.0][1])


@pytest.mark.parametrize('knobs', KNOB_VARIANTS, ids=lambda k: ','.join(f'{a}={b}' for a, b in k.items()) or 'default')
@pytest.mark.parametrize('name', ['pnnh_resnet20', 'pnnh_resnet56', pytest.param('pnnh_resnet34', marks=pytest.mark.slow),
                                  pytest.param('pnnh_resnet50', marks=pytest.mark.slow)])
def test_parameter_count_matches_the_docstring_closed_form(name, knobs):
    model = timm.create_model(name, **knobs)
    defaults = dict(coder_ratio=0.25 if name == 'pnnh_resnet50' else 1.0, learner_ratio=1.0, coder_kernel=1, coder_norm=False)
    settings = {**defaults, **{k: v for k, v in knobs.items() if k in defaults}}
    blocks = pnnh_blocks(model)
    for block in blocks:
        assert sum(p.numel() for p in block.parameters()) == closed_form_params(block, **settings)
    # the whole model: the residual baseline, with every stride-1 block swapped for the closed form
    baseline = timm.create_model(name.replace('pnnh_', 'cifar_' if name in ('pnnh_resnet20', 'pnnh_resnet56') else ''))
    baseline_blocks = {n: m for n, m in baseline.named_modules()}
    swapped = sum(sum(p.numel() for p in baseline_blocks[n].parameters())
                  for n, m in model.named_modules() if m in blocks)
    expected = sum(p.numel() for p in baseline.parameters()) - swapped + sum(
        closed_form_params(b, **settings) for b in blocks)
    assert sum(p.numel() for p in model.parameters()) == expected


def _cosine(a, b):
    return F.cosine_similarity(a.flatten(1), b.flatten(1)).mean().item()


@pytest.mark.parametrize('coder_init', ['dirac', 'kaiming', 'orthogonal'])
def test_coder_keeps_the_input_better_than_a_plain_layer(coder_init):
    """At initialisation (ResNet's init and zero_init_last) on a post-ReLU input of the last stage."""
    torch.manual_seed(0)
    x = torch.relu(torch.randn(16, 64, 12, 12))
    block = pnnh_blocks(timm.create_model('pnnh_resnet20', coder_init=coder_init))[-1].eval()
    plain = [m for m in timm.create_model('plain_resnet20').modules() if isinstance(m, PlainBasicBlock)][-1].eval()
    with torch.no_grad():
        coder_out = block.coder.decode(torch.relu(block.coder.encode(x)))
        block_out, plain_out = block(x), plain(x)
    coder_cos, plain_cos = _cosine(coder_out, x), _cosine(plain_out, x)
    assert coder_cos > plain_cos + 0.1, (coder_cos, plain_cos)
    assert _cosine(block_out, x) > plain_cos + 0.1
    if coder_init == 'dirac':
        torch.testing.assert_close(coder_out, x)  # exact for a non-negative input
        torch.testing.assert_close(block_out, x)  # the learner starts at zero: the block is its coder


@pytest.mark.parametrize('kwargs, message', [
    (dict(coder_ratio=2.5), 'coder_ratio=2.5'),
    (dict(coder_ratio=0), 'coder_ratio=0'),
    (dict(learner_ratio=-1.0), 'learner_ratio=-1.0'),
    (dict(coder_ratio=0.3), 'coder_ratio=0.3 does not divide 16 channels'),
    (dict(learner_ratio=0.1), 'learner_ratio=0.1 does not divide'),
    (dict(coder_kernel=2), 'coder_kernel=2'),
    (dict(coder_lr_scale=0.0), 'coder_lr_scale=0.0'),
    (dict(coder_init='xavier'), "coder_init='xavier'"),
    (dict(coder_norm='yes'), "coder_norm='yes'"),
    (dict(plain_transitions=1), 'plain_transitions=1'),
    (dict(colour='red'), "unknown model argument colour='red'"),
])
def test_bad_arguments_raise_a_value_error_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace('.', r'\.')):
        timm.create_model('pnnh_resnet20', **kwargs)


def test_baselines_reject_pnnh_knobs():
    for name in ('plain_resnet20', 'cifar_resnet20', 'plain_resnet18'):
        with pytest.raises(ValueError, match=f'{name}: unknown model argument coder_ratio=0.5'):
            timm.create_model(name, coder_ratio=0.5)


def _add_count(model):
    graph = torch.fx.symbolic_trace(model).graph
    return sum(1 for n in graph.nodes if getattr(n.target, '__name__', str(n.target)) in ('add', 'iadd', '__add__'))


def test_plain_transitions_remove_every_shortcut():
    default = timm.create_model('pnnh_resnet20')
    plain_transitions = timm.create_model('pnnh_resnet20', plain_transitions=True)
    assert len([m for m in default.modules() if getattr(m, 'downsample', None) is not None]) == 2
    assert not [m for m in plain_transitions.modules() if getattr(m, 'downsample', None) is not None]
    # one add per PNNH block (coder + learner) and, by default, the two residual transition blocks' adds
    assert _add_count(plain_transitions) == len(pnnh_blocks(plain_transitions)) == 7
    assert _add_count(default) == 7 + 2
    assert _add_count(timm.create_model('plain_resnet20')) == 0
    assert _add_count(timm.create_model('cifar_resnet20')) == 9


@pytest.mark.parametrize('kwargs, message', [
    (dict(aa_layer=torch.nn.AvgPool2d), 'aa_layer=.* is not supported by PnnhBasicBlock: it must be None'),
    (dict(block_reduce_first=2), 'block_reduce_first=2 is not allowed: PnnhBasicBlock takes only block_reduce_first=1'),
    (dict(coder_sharing='model'), "coder_sharing='model' is not allowed: it must be one of"),
])
def test_arguments_the_pnnh_blocks_cannot_honour_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model('pnnh_resnet20', **kwargs)


def test_signed_dirac_coder_of_twice_the_width_is_the_identity():
    coder = PnnhBasicBlock(4, 4, coder_ratio=2.0).coder
    x = torch.randn(2, 4, 5, 5)  # signed: relu(x) - relu(-x) = x
    torch.testing.assert_close(coder.decode(torch.relu(coder.encode(x))), x)
    torch.testing.assert_close(PnnhBasicBlock(4, 4, coder_ratio=0.5).coder.kernel()[:, :, 0, 0], torch.eye(4)[:2])


def stage_shared(**kwargs):
    """pnnh_resnet20 with coder_sharing='stage', and a per-block-coder copy holding the same weights."""
    torch.manual_seed(0)
    shared = timm.create_model('pnnh_resnet20', coder_sharing='stage', coder_init='kaiming', **kwargs)
    per_block = timm.create_model('pnnh_resnet20', coder_init='kaiming', **kwargs)
    per_block.load_state_dict({k: shared.get_submodule(k.rsplit('.', 1)[0]).weight if k.endswith('coder.weight') else v
                               for k, v in per_block.state_dict().items()} | shared.state_dict())
    return shared, per_block


def test_stage_coder_sharing_is_one_parameter_per_stage_counted_once():
    shared, per_block = stage_shared()
    coders = [k for k in shared.state_dict() if k.endswith('coder.weight')]
    assert coders == ['layer1.0.coder.weight', 'layer2.1.coder.weight', 'layer3.1.coder.weight']  # one per stage
    assert set(shared.state_dict()) | {k for k in per_block.state_dict() if 'coder' in k} == set(per_block.state_dict())
    # one entry per stage, so safetensors saves it (it refuses tensors shared between keys) and a new model loads it
    import safetensors.torch
    again = timm.create_model('pnnh_resnet20', coder_sharing='stage')
    again.load_state_dict(safetensors.torch.load(safetensors.torch.save(shared.state_dict())))
    assert all(b.coder.weight is pnnh_blocks(again.layer1)[0].coder.weight for b in pnnh_blocks(again.layer1))
    torch.testing.assert_close(pnnh_blocks(again.layer1)[-1].coder.weight, pnnh_blocks(shared.layer1)[-1].coder.weight)
    for stage, n_pnnh in ((shared.layer1, 3), (shared.layer2, 2), (shared.layer3, 2)):
        weights = [b.coder.weight for b in pnnh_blocks(stage)]
        assert len(weights) == n_pnnh and all(w is weights[0] for w in weights)
    assert len({id(b.coder.weight) for b in pnnh_blocks(shared)}) == 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # TorchScript and torch.fx keep working with a shared Parameter
        torch.testing.assert_close(torch.jit.script(shared.eval())(x), shared(x))
        torch.testing.assert_close(torch.fx.symbolic_trace(shared)(x), shared(x))
    per_block_coders = sum(b.coder.weight.numel() for b in pnnh_blocks(per_block))
    stage_coders = sum(s[-1].coder.weight.numel() for s in (shared.layer1, shared.layer2, shared.layer3))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(per_block) - count(shared) == per_block_coders - stage_coders == 16 * 16 * 2 + 32 * 32 + 64 * 64


def test_stage_shared_coder_gets_the_gradient_of_every_block():
    shared, per_block = stage_shared(drop_path_rate=0.0)
    x = torch.randn(4, 3, 16, 16)
    for model in (shared, per_block):
        model.train()(x).square().sum().backward()
    for stage in ('layer1', 'layer2', 'layer3'):
        got = pnnh_blocks(getattr(shared, stage))[0].coder.weight.grad
        want = sum(b.coder.weight.grad for b in pnnh_blocks(getattr(per_block, stage)))
        assert got.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_stage_shared_coder_folds_exactly():
    from timm.utils import reparameterize_model
    shared, _ = stage_shared()
    shared.eval()
    gen = torch.Generator().manual_seed(1)
    for m in shared.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2, generator=gen)
            m.running_var.uniform_(0.5, 1.5, generator=gen)
            m.weight.data.uniform_(0.2, 0.6, generator=gen)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = shared(x)
        fused = reparameterize_model(shared)
        assert ref.std() > 1e-2
        assert (fused(x) - ref).abs().max().item() <= 1e-4
    convs = [m.plain.encoder.weight for m in fused.modules() if isinstance(m, PnnhBasicBlock)]
    assert len({c.data_ptr() for c in convs}) == len(convs)  # each folded block holds its own copy
