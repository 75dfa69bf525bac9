"""PNNH / plain / residual ViT families: timm conformance, structure, parameter counts, a training check."""
import operator
import shutil

import pytest
import timm
import torch
from safetensors.torch import save_file
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models import create_feature_extractor, get_graph_node_names, group_parameters
from timm.models.vision_transformer import Block

import timm_pnnh  # noqa: F401
from timm_pnnh.models import FAMILY_MODULES, model_names, registered_models
from timm_pnnh.models.coders import LinearCoder
from timm_pnnh.models.pnnh_vit import PNNH_VIT_KNOBS, PlainBlock, PnnhBlock

torch.set_num_threads(1)

EXPECTED_NAMES = {
    *(f'{f}_vit_{s}_patch16_224' for f in ('pnnh', 'plain') for s in ('tiny', 'small', 'base')),
    *(f'{f}_vit_{s}_patch4_32' for f in ('pnnh', 'plain', 'cifar') for s in ('tiny', 'small')),
    *(f'pnnh_vit_{s}_patch16_224_identity' for s in ('tiny', 'small', 'base')),
}
SMALL = dict(embed_dim=32, num_heads=2, depth=2)  # CPU-sized variant of the 32x32 models
FAMILY_NAMES = ('pnnh_vit_tiny_patch4_32', 'plain_vit_tiny_patch4_32', 'cifar_vit_tiny_patch4_32')


def small_model(name, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, **dict(SMALL, **kwargs))


def images(batch=2, size=32, chans=3):
    return torch.randn(batch, chans, size, size, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------- registration and errors

def test_registered_names_and_cfgs():
    assert 'pnnh_vit' in FAMILY_MODULES
    assert set(registered_models('*_vit_*')) - set(model_names('sasp')) == EXPECTED_NAMES
    assert {n for f in ('pnnh', 'plain', 'residual') for n in model_names(f, '*_vit_*')} == EXPECTED_NAMES
    assert not EXPECTED_NAMES & set(timm.list_models(module='vision_transformer'))
    for name in EXPECTED_NAMES:
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.first_conv == 'patch_embed.proj' and cfg.classifier == 'head'
        assert cfg.input_size == ((3, 32, 32) if name.endswith('_32') else (3, 224, 224))
        assert cfg.num_classes == (10 if name.endswith('_32') else 1000)


@pytest.mark.parametrize('kwargs, match', [
    (dict(coder_init='xavier'), r"coder_init='xavier' is not allowed: it must be one of \('dirac'"),
    (dict(coder_ratio=3.0), r'coder_ratio=3.0 is not allowed: it must be a number in \(0.0, 2.0\]'),
    (dict(coder_ratio=True), r'coder_ratio=True is not allowed'),
    (dict(coder_ratio=0.3), r'coder_ratio=0.3 does not divide 32 channels'),
    (dict(coder_act='tanh'), r"coder_act='tanh' is not allowed: it must be one of \('mlp', 'gelu', 'relu'\)"),
    (dict(coder_norm=1), r'coder_norm=1 is not allowed: it must be True or False'),
    (dict(arrangement='serial'), r"arrangement='serial' is not allowed: it must be one of \('parallel'"),
    (dict(zero_init_last='yes'), r"zero_init_last='yes' is not allowed"),
    (dict(bogus=1), r'pnnh_vit_tiny_patch4_32: unknown model argument bogus=1; allowed: .*coder_ratio'),
])
def test_bad_pnnh_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small_model('pnnh_vit_tiny_patch4_32', **kwargs)


@pytest.mark.parametrize('name', ['plain_vit_tiny_patch4_32', 'cifar_vit_tiny_patch4_32'])
def test_pnnh_knobs_are_unknown_to_baselines(name):
    with pytest.raises(ValueError, match=f'{name}: unknown model argument coder_ratio=1.0'):
        small_model(name, coder_ratio=1.0)
    with pytest.raises(TypeError):  # timm's contract: an unknown constructor argument is a TypeError
        small_model(name, not_a_model_arg=1)


# ---------------------------------------------------------------- the coder and the block

def test_coder_decoder_is_the_encoder_transposed():
    coder = LinearCoder(8, 16, 'orthogonal')
    assert [n for n, _ in coder.named_parameters()] == ['weight']
    assert coder.decoder_weight.data_ptr() == coder.weight.data_ptr()
    h = torch.randn(3, 16)
    torch.testing.assert_close(coder.decode(h), h @ coder.weight)
    with torch.no_grad():  # an in-place change of E changes the decoder too: no copy anywhere
        coder.weight.mul_(2.0)
    torch.testing.assert_close(coder.decode(h), h @ coder.weight)


@pytest.mark.parametrize('act', [nn.GELU, nn.ReLU, nn.SiLU])
def test_signed_dirac_coder_is_exact_identity(act):
    coder = LinearCoder(8, 16, 'dirac', act)
    torch.testing.assert_close(coder.weight, torch.cat([torch.eye(8), -torch.eye(8)]))
    x = torch.randn(5, 8)
    torch.testing.assert_close(coder(x), x, atol=1e-6, rtol=1e-6)


def test_unsigned_dirac_coder_is_the_activation():
    x = torch.randn(5, 8)
    torch.testing.assert_close(LinearCoder(8, 8, 'dirac', nn.ReLU)(x), F.relu(x))
    torch.testing.assert_close(LinearCoder(8, 4, 'dirac', nn.ReLU)(x), F.pad(F.relu(x[:, :4]), (0, 4)))


@pytest.mark.parametrize('init, coder_dim', [('kaiming', 16), ('kaiming', 32), ('orthogonal', 16), ('orthogonal', 32)])
def test_random_coder_keeps_the_input_in_expectation(init, coder_dim):
    torch.manual_seed(0)
    x = torch.randn(16)
    mean = torch.stack([LinearCoder(16, coder_dim, init, nn.ReLU)(x) for _ in range(2000)]).mean(0)
    assert torch.linalg.vector_norm(mean - x) < 0.1 * torch.linalg.vector_norm(x)


def _residual_adds(block: nn.Module):
    """``add`` nodes in the traced block that take the block's input itself as an operand."""
    graph = torch.fx.symbolic_trace(block).graph
    x = next(n for n in graph.nodes if n.op == 'placeholder')
    adds = {operator.add, operator.iadd, torch.add}
    return [n for n in graph.nodes
            if (n.target in adds or n.target in ('add', 'add_')) and x in n.all_input_nodes]


@pytest.mark.parametrize('kwargs', [{}, dict(arrangement='sequential'), dict(coder_norm=True), dict(init_values=1e-5)])
def test_no_residual_add_in_pnnh_blocks(kwargs):
    model = small_model('pnnh_vit_tiny_patch4_32', drop_path_rate=0.1, **kwargs)
    assert _residual_adds(Block(32, 2))  # the check does find timm's residual adds
    for block in model.blocks:
        assert isinstance(block, PnnhBlock)
        assert _residual_adds(block) == []


def test_no_residual_add_in_plain_blocks():
    model = small_model('plain_vit_tiny_patch4_32')
    assert all(isinstance(b, PlainBlock) and _residual_adds(b) == [] for b in model.blocks)


def test_pnnh_block_starts_as_identity_and_drop_path_drops_the_learner_only():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    block = PnnhBlock(16, 2, coder_ratio=2.0, coder_init='dirac').eval()  # signed Dirac, zero-init learner
    torch.testing.assert_close(block(x), x, atol=1e-6, rtol=1e-6)
    block = PnnhBlock(16, 2, zero_init_last=False, drop_path=1.0)
    block.train()
    torch.testing.assert_close(block(x), block.coder(x))
    block.eval()
    assert (block(x) - block.coder(x)).abs().max() > 1e-3


def test_plain_block_is_timm_block_without_the_adds():
    torch.manual_seed(0)
    block = Block(16, 2, init_values=0.5).eval()
    plain = PlainBlock(16, 2, init_values=0.5).eval()
    plain.load_state_dict(block.state_dict())
    x = torch.randn(2, 5, 16)
    h = block.ls1(block.attn(block.norm1(x)))
    torch.testing.assert_close(plain(x), block.ls2(block.mlp(block.norm2(h))))


def _block_params(C, H, Cc, k, qkv_bias=True, proj_bias=True, layer_scale=False):
    """The closed form in ``PnnhBlock``'s docstring."""
    return (4 * C + 3 * C * C + 3 * C * qkv_bias + C * C + C * proj_bias + 2 * C * H + (H + C) * proj_bias
            + 2 * C * layer_scale + k * Cc * C)


@pytest.mark.parametrize('kwargs', [
    {}, dict(coder_ratio=2.0), dict(coder_ratio=0.5, arrangement='sequential'),
    dict(qkv_bias=False, init_values=1e-5, mlp_ratio=2.0)])
def test_block_parameter_count_closed_form(kwargs):
    model = small_model('pnnh_vit_tiny_patch4_32', **kwargs)
    C, H = 32, int(32 * kwargs.get('mlp_ratio', 4.0))
    Cc = int(C * kwargs.get('coder_ratio', PNNH_VIT_KNOBS['coder_ratio']))
    k = 2 if kwargs.get('arrangement') == 'sequential' else 1
    expected = _block_params(C, H, Cc, k, kwargs.get('qkv_bias', True), True, 'init_values' in kwargs)
    for block in model.blocks:
        assert sum(p.numel() for p in block.parameters()) == expected


@pytest.mark.parametrize('name', sorted(EXPECTED_NAMES))
def test_model_parameter_count_closed_form(name):
    model = timm.create_model(name, device='meta')
    C, depth, patch = model.embed_dim, len(model.blocks), model.patch_embed.patch_size[0]
    tokens = model.patch_embed.num_patches + 1
    Cc = int(PNNH_VIT_KNOBS['coder_ratio'] * C) if name.startswith('pnnh') else 0
    coders = 1
    if name.endswith('_identity'):  # the exact-conversion form: two 2C-wide coders per block (sequential)
        Cc, coders = 2 * C, 2
    stem = 3 * patch * patch * C + C + C + tokens * C  # patch embed (w + b), class token, position embedding
    head = 2 * C + C * model.num_classes + model.num_classes  # final norm, classifier
    expected = stem + depth * _block_params(C, 4 * C, Cc, coders) + head
    assert sum(p.numel() for p in model.parameters()) == expected


# ---------------------------------------------------------------- timm conformance

@pytest.mark.parametrize('name', FAMILY_NAMES)
def test_classes_chans_pool(name):
    model = small_model(name, num_classes=7, in_chans=1, global_pool='avg')
    out = model(images(chans=1))
    assert out.shape == (2, 7)
    assert model.global_pool == 'avg' and not isinstance(model.fc_norm, nn.Identity)
    model.reset_classifier(5)
    assert model(images(chans=1)).shape == (2, 5)
    model.reset_classifier(0, 'token')
    assert model(images(chans=1)).shape == (2, 32)


@pytest.mark.parametrize('name', FAMILY_NAMES)
def test_drop_path_rate(name):
    model = small_model(name, depth=3, drop_path_rate=0.2)
    rates = [getattr(block.drop_path1, 'drop_prob', 0.0) for block in model.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2])


@pytest.mark.parametrize('name', FAMILY_NAMES)
def test_img_size_change_resamples_position_embedding(name, tmp_path):
    source = small_model(name)
    path = tmp_path / 'model.safetensors'
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    target = timm.create_model(name, pretrained=True, img_size=48, pretrained_cfg_overlay=dict(file=str(path)), **SMALL)
    assert target.pos_embed.shape == (1, 1 + 12 * 12, 32)
    expected = resample_abs_pos_embed(source.pos_embed, new_size=(12, 12), old_size=(8, 8), num_prefix_tokens=1)
    torch.testing.assert_close(target.pos_embed, expected)
    torch.testing.assert_close(target.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight)
    assert target(images(size=48)).shape == (2, 10)


@pytest.mark.parametrize('name', FAMILY_NAMES)
def test_dynamic_img_size(name):
    model = small_model(name, dynamic_img_size=True).eval()
    assert model(images(size=48)).shape == (2, 10)
    assert model(images(size=32)).shape == (2, 10)


@pytest.mark.parametrize('name', FAMILY_NAMES)
def test_features_only_and_forward_intermediates(name):
    model = small_model(name, depth=3).eval()
    x = images()
    final, inter = model.forward_intermediates(x)
    assert len(inter) == 3 and all(t.shape == (2, 32, 8, 8) for t in inter)
    torch.testing.assert_close(final, model.forward_features(x))
    tokens = model.blocks[0](model.norm_pre(model._pos_embed(model.patch_embed(x))))
    torch.testing.assert_close(inter[0], tokens[:, 1:].reshape(2, 8, 8, 32).permute(0, 3, 1, 2))
    features = small_model(name, depth=3, features_only=True, out_indices=(0, 2)).eval()
    assert features.feature_info.channels() == [32, 32]
    outs = features(x)
    torch.testing.assert_close(outs[0], inter[0])
    torch.testing.assert_close(outs[1], inter[2])


@pytest.mark.parametrize('name', FAMILY_NAMES)
def test_grad_checkpointing_matches(name):
    x = images()
    grads = []
    for checkpointing in (False, True):
        model = small_model(name, zero_init_last=False) if name.startswith('pnnh') else small_model(name)
        model.set_grad_checkpointing(checkpointing)
        model(x).sum().backward()
        grads.append(model.blocks[0].attn.qkv.weight.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])


def test_group_matcher_puts_the_coder_in_its_block():
    model = small_model('pnnh_vit_tiny_patch4_32', arrangement='sequential')
    groups = group_parameters(model, model.group_matcher())
    assert sum(len(g) for g in groups.values()) == len(list(model.parameters()))
    block0 = next(g for g in groups.values() if 'blocks.0.attn.qkv.weight' in g)
    assert 'blocks.0.coder.weight' in block0 and 'blocks.0.coder2.weight' in block0


@pytest.mark.parametrize('name', FAMILY_NAMES)
def test_torch_fx_feature_extraction(name):
    model = small_model(name).eval()
    train_nodes, eval_nodes = get_graph_node_names(model)
    if name.startswith('pnnh'):
        assert any(n.startswith('blocks.1.coder') for n in eval_nodes)
    extractor = create_feature_extractor(model, {'blocks.1': 'last', 'head': 'logits'})
    x = images()
    out = extractor(x)
    torch.testing.assert_close(out['logits'], model(x))
    torch.testing.assert_close(out['last'][:, 1:], model.forward_intermediates(x, output_fmt='NLC')[1][1])


@pytest.mark.parametrize('backend', [
    'aot_eager',
    pytest.param('inductor', marks=[pytest.mark.slow, pytest.mark.skipif(
        shutil.which('c++') is None and shutil.which('g++') is None,
        reason='torch.compile inductor on CPU needs a C++ compiler; none on PATH (aot_eager still runs)')]),
])
def test_torch_compile_fullgraph_matches_eager(backend):
    model = small_model('pnnh_vit_tiny_patch4_32', depth=1, zero_init_last=False).eval()
    x = images()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('name', FAMILY_NAMES)
def test_bf16_autocast(name):
    model = small_model(name, zero_init_last=False) if name.startswith('pnnh') else small_model(name)
    x = images()
    reference = model(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert torch.isfinite(model.blocks[0].attn.qkv.weight.grad).all()
    assert (out.float() - reference).norm() < 0.1 * reference.norm()


def test_pnnh_vit_small_at_96_builds_forward_backward():
    model = timm.create_model('pnnh_vit_small_patch16_224', num_classes=10, img_size=96)
    out = model(torch.randn(2, 3, 96, 96))
    assert out.shape == (2, 10)
    F.cross_entropy(out, torch.tensor([1, 2])).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.blocks[11].coder.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- training: PNNH trains where plain does not

def _train_losses(name, steps=30):
    g = torch.Generator().manual_seed(0)
    templates = torch.randn(4, 3, 16, 16, generator=g)
    y = torch.arange(256) % 4
    x = templates[y] + 0.5 * torch.randn(256, 3, 16, 16, generator=g)
    torch.manual_seed(0)
    model = timm.create_model(name, img_size=16, embed_dim=32, num_heads=2, depth=12, num_classes=4)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for i in range(steps):
        batch = slice(i * 64 % 256, i * 64 % 256 + 64)
        loss = F.cross_entropy(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return sum(losses[:4]) / 4, sum(losses[-4:]) / 4


@pytest.mark.slow
def test_depth12_pnnh_vit_trains_where_plain_vit_does_not():
    pnnh_start, pnnh_end = _train_losses('pnnh_vit_tiny_patch4_32')
    plain_start, plain_end = _train_losses('plain_vit_tiny_patch4_32')
    _, residual_end = _train_losses('cifar_vit_tiny_patch4_32')
    assert pnnh_end < 0.5 * pnnh_start  # PNNH at least halves its loss
    assert plain_start - plain_end < 0.25 * (pnnh_start - pnnh_end)  # plain gains less than a quarter of that
    assert abs(pnnh_end - residual_end) < abs(plain_end - pnnh_end)  # PNNH ends nearer the residual net


def test_linear_coder_recomputes_its_code_and_saves_what_the_residual_block_saves():
    """In training the coder keeps only its input (which the block keeps anyway); the gradients are
    those of the autograd form."""
    import contextlib
    from timm_pnnh.bench import _saved_bytes
    torch.manual_seed(0)
    pnnh = timm.create_model('pnnh_vit_tiny_patch4_32', depth=2).train()
    residual = timm.create_model('cifar_vit_tiny_patch4_32', depth=2).train()
    with torch.no_grad():
        for name, p in pnnh.named_parameters():
            if name.endswith(('attn.proj.weight', 'mlp.fc2.weight')):  # undo zero_init_last
                p.normal_(0, 0.05)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    coders = [m for m in pnnh.modules() if isinstance(m, LinearCoder)]
    saved, grads = [], []
    for recompute in (True, False):
        for coder in coders:
            coder.recompute = recompute
        saved.append(_saved_bytes(pnnh, x, y, contextlib.nullcontext()))
        pnnh.zero_grad()
        F.cross_entropy(pnnh(x), y).backward()
        grads.append([p.grad.clone() for p in pnnh.parameters()])
    assert saved[0] <= _saved_bytes(residual, x, y, contextlib.nullcontext()) < saved[1]
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want)
