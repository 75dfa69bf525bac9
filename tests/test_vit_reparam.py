"""Deployment form of the PNNH ViT: reparameterized blocks equal the trained form in eval mode and are
one linear -> act -> linear for the coder and the MLP, with no residual add."""
import operator

import pytest
import safetensors.torch
import timm
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.utils import reparameterize_model

import timm_pnnh  # noqa: F401  (registers the models)
from timm_pnnh.models import registered_models
from timm_pnnh.models.coders import LinearCoder
from timm_pnnh.models.pnnh_vit import PnnhBlock, SplitAct

torch.set_num_threads(1)

PNNH_VITS = registered_models('pnnh_vit_*')
TINY = dict(embed_dim=32, num_heads=2, depth=2)
# the variants that change what folds fold both ways; the default deployed form is side by side
MERGED_VARIANTS = [
    dict(coder_ratio=2.0),
    dict(coder_ratio=0.5),
    dict(coder_norm=True),
    dict(coder_init='orthogonal'),
    dict(coder_init='kaiming', coder_ratio=0.5, coder_norm=True),
    dict(coder_act='relu'),
    dict(coder_act='gelu'),
    dict(init_values=0.5),
    dict(proj_bias=False, qkv_bias=True),
    dict(arrangement='sequential'),
    dict(arrangement='sequential', coder_norm=True, init_values=0.5, coder_act='relu'),
]
VARIANTS = [dict(kw, deploy_form=form) for kw in MERGED_VARIANTS for form in ('side_by_side', 'merged')]


def randomise(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial values where init leaves zeros or constants: the zero-initialised learner outputs,
    LayerScale, the LayerNorms, and a perturbed (no longer Dirac) coder."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(('attn.proj.weight', 'mlp.fc2.weight')):
                p.normal_(0, 0.5 / p.shape[1] ** 0.5, generator=g)
            elif name.endswith(('proj.bias', 'fc2.bias', 'fc1.bias', 'qkv.bias')):
                p.normal_(0, 0.1, generator=g)
            elif name.endswith('gamma'):
                p.uniform_(0.2, 1.0, generator=g)
            elif 'norm' in name and name.endswith('weight'):
                p.uniform_(0.5, 1.5, generator=g)
            elif 'norm' in name and name.endswith('bias'):
                p.normal_(0, 0.1, generator=g)
            elif name.endswith('coder.weight') or name.endswith('coder2.weight'):
                # scaled by the coder's width, so that E^T E stays near the identity at any width (a fixed
                # scale multiplies the tokens by about 1 + 0.01 * 2C per coder, and overflows ViT-Base)
                p.add_(torch.randn(p.shape, generator=g), alpha=0.1 * (64 / p.shape[0]) ** 0.5)


def model_and_input(name: str, batch: int = 2, **kwargs):
    """The model (eval, randomised) and a random batch at its cfg's input size."""
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    randomise(model)
    size = 32 if 'img_size' in kwargs else model.pretrained_cfg['input_size'][-1]
    return model, torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def assert_deployed(model: nn.Module) -> None:
    """Side by side: the coder(s) and timm's Mlp stay; merged: the coder that meets the MLP is in it."""
    blocks = [m for m in model.modules() if isinstance(m, PnnhBlock)]
    assert blocks
    for block in blocks:
        assert block.inference_mode
        assert isinstance(block.ls1, nn.Identity) and isinstance(block.ls2, nn.Identity)
        if block.deploy_form == 'merged':
            assert isinstance(block.mlp, nn.Sequential)
            assert not hasattr(block, 'coder2' if block.sequential else 'coder')
        else:
            assert isinstance(block.mlp, timm.layers.Mlp) and isinstance(block.coder, LinearCoder)


def max_diff(name: str, batch: int = 2, **kwargs) -> float:
    model, x = model_and_input(name, batch, **kwargs)
    with torch.no_grad():
        ref = model(x)
        assert ref.std() > 1e-2  # the logits are not trivially equal
        fused = reparameterize_model(model, inplace=True)
        assert_deployed(fused)
        return (fused(x) - ref).abs().max().item()


@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow) if '_patch16_224' in n else n for n in PNNH_VITS])
def test_reparameterized_logits_match(name):
    """Every registered PNNH ViT at its real depth, width and input size (batch 1: about 5 s in all)."""
    assert len(PNNH_VITS) == 8  # 5 sizes and the 3 exact-conversion forms (_identity)
    assert max_diff(name, batch=1) <= 1e-4


@pytest.mark.parametrize('kwargs', VARIANTS, ids=lambda kw: ','.join(f'{k}={v}' for k, v in kw.items()))
def test_reparameterized_variants_match(kwargs):
    assert max_diff('pnnh_vit_tiny_patch4_32', **dict(TINY, **kwargs)) <= 1e-4


def block_and_tokens(**kwargs):
    model, _ = model_and_input('pnnh_vit_tiny_patch4_32', **dict(TINY, **kwargs))
    return model.blocks[0], torch.randn(2, 65, 32, generator=torch.Generator().manual_seed(2))


LINEARS = {F.linear}
ADDS = {operator.add, operator.iadd, torch.add, 'add', 'add_'}


def graph_summary(block: nn.Module):
    """From an fx trace: Linear module calls (by name), F.linear calls, activation calls, and adds with
    the block input as an operand."""
    graph = torch.fx.symbolic_trace(block).graph
    x = next(n for n in graph.nodes if n.op == 'placeholder')
    modules = dict(block.named_modules())
    linears = [n.target for n in graph.nodes if n.op == 'call_module' and isinstance(modules[n.target], nn.Linear)]
    functional = [n for n in graph.nodes if n.op == 'call_function' and n.target in LINEARS]
    acts = [n.target for n in graph.nodes
            if n.op == 'call_module' and isinstance(modules[n.target], (nn.GELU, nn.ReLU, timm.layers.GELU))]
    skips = [n for n in graph.nodes if n.target in ADDS and x in n.all_input_nodes]
    return linears, functional, acts, skips


def fold_and_compare(block, x):
    """Reparameterize ``block`` in place; its output must not move by more than 1e-5."""
    with torch.no_grad():
        ref = block(x)
        block.reparameterize()
        assert (block(x) - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize('coder_norm', [False, True])
def test_merged_parallel_block_is_linear_act_linear(coder_norm):
    block, x = block_and_tokens(coder_norm=coder_norm, init_values=0.5, deploy_form='merged')
    linears, functional, acts, skips = graph_summary(block)
    assert len(functional) == 2 and len(acts) == 2  # encoder / decoder, and the MLP's act plus the coder's
    fold_and_compare(block, x)
    linears, functional, acts, skips = graph_summary(block)
    assert sorted(linears) == ['attn.proj', 'attn.qkv', 'mlp.fc1', 'mlp.fc2']
    assert functional == [] and acts == ['mlp.act'] and skips == []
    dim, coder_dim, hidden = 32, 32, 128
    fc1, fc2 = block.mlp.fc1, block.mlp.fc2
    assert fc1.weight.shape == (coder_dim + hidden, dim if coder_norm else 2 * dim)
    assert fc2.weight.shape == (dim, coder_dim + hidden)
    # the decoder is the encoder transposed; the coder's fc1 bias is zero; with coder_norm=False the
    # off-diagonal blocks are zero
    assert torch.equal(fc2.weight[:, :coder_dim], fc1.weight[:coder_dim, :dim].t())
    assert torch.equal(fc1.bias[:coder_dim], torch.zeros(coder_dim))
    if not coder_norm:
        assert not fc1.weight[:coder_dim, dim:].any() and not fc1.weight[coder_dim:, :dim].any()


def test_side_by_side_block_keeps_coder_attention_and_mlp_with_no_skip():
    block, x = block_and_tokens(init_values=0.5)
    fold_and_compare(block, x)
    linears, functional, acts, skips = graph_summary(block)
    assert sorted(linears) == ['attn.proj', 'attn.qkv', 'mlp.fc1', 'mlp.fc2']
    assert len(functional) == 2 and sorted(acts) == ['coder.act', 'mlp.act'] and skips == []
    assert isinstance(block.ls1, nn.Identity) and isinstance(block.ls2, nn.Identity)  # folded into proj / fc2


def test_merged_block_with_a_different_coder_act_keeps_both_acts():
    block, x = block_and_tokens(coder_act='relu', deploy_form='merged')
    fold_and_compare(block, x)
    act = block.mlp.act
    assert isinstance(act, SplitAct) and act.split == 32
    assert isinstance(act.act1, nn.ReLU) and isinstance(act.act2, nn.GELU)
    assert graph_summary(block)[3] == []


def test_merged_sequential_block_folds_its_second_half():
    block, x = block_and_tokens(arrangement='sequential', deploy_form='merged')
    fold_and_compare(block, x)
    linears, functional, acts, skips = graph_summary(block)
    # first half: coder(x) + attn(N1 x), plain already (encoder, act, decoder); second half: one MLP
    assert sorted(linears) == ['attn.proj', 'attn.qkv', 'mlp.fc1', 'mlp.fc2']
    assert len(functional) == 2 and sorted(acts) == ['coder.act', 'mlp.act'] and skips == []


def test_timm_reparameterize_model_folds_a_vit_into_a_copy():
    model, x = model_and_input('pnnh_vit_tiny_patch16_224', depth=2, img_size=32)
    with torch.no_grad():
        ref = model(x)
        fused = reparameterize_model(model)
        assert fused is not model
        assert_deployed(fused)
        assert (fused(x) - ref).abs().max().item() <= 1e-4
        assert not any(isinstance(b, PnnhBlock) and b.inference_mode for b in model.modules())  # a copy


def test_reparameterize_is_idempotent_and_in_place():
    block, x = block_and_tokens(init_values=0.5)
    with torch.no_grad():
        block.reparameterize()
        once = block(x)
        state = {k: v.clone() for k, v in block.state_dict().items()}
        block.reparameterize()
        assert torch.equal(block(x), once)
        assert state.keys() == block.state_dict().keys()
        assert all(torch.equal(v, block.state_dict()[k]) for k, v in state.items())
        model, _ = model_and_input('pnnh_vit_tiny_patch4_32', **TINY)
        assert reparameterize_model(model, inplace=True) is model
        assert_deployed(model)


@pytest.mark.parametrize('kwargs, match', [
    (dict(scale_mlp_norm=True),
     r"mlp=Mlp cannot fold with the coder: only timm's Mlp with Linear layers and no hidden norm"),
    (dict(mlp_layer=timm.layers.SwiGLUPacked), r'mlp=GluMlp cannot fold'),
])
def test_merged_rejects_an_mlp_it_cannot_fold(kwargs, match):
    block, _ = block_and_tokens(deploy_form='merged', **kwargs)
    with pytest.raises(ValueError, match=match):
        block.reparameterize()
    assert not block.inference_mode and hasattr(block, 'coder')


def test_folded_vit_round_trips_through_a_file_and_create_model(tmp_path):
    """Fold, save as safetensors, load with create_model(inference_mode=True): the same logits."""
    model, x = model_and_input('pnnh_vit_tiny_patch4_32', **TINY)
    fused = reparameterize_model(model)
    path = str(tmp_path / 'folded.safetensors')
    safetensors.torch.save_file(fused.state_dict(), path)
    loaded = timm.create_model('pnnh_vit_tiny_patch4_32', inference_mode=True, pretrained=True,
                               pretrained_cfg_overlay=dict(file=path), **TINY).eval()
    assert_deployed(loaded)
    assert loaded.state_dict().keys() == fused.state_dict().keys()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), fused(x))
        assert (loaded(x) - model(x)).abs().max().item() <= 1e-4
