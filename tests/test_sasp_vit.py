"""The SAS-P ViT baseline (models/sasp_vit.py): identity attention at initialisation, no residual add."""
import pytest
import timm
from timm.optim import create_optimizer_v2
import torch

from timm_pnnh.models import model_names
from timm_pnnh.models.sasp_vit import MLP_GAIN_INIT, SaspBlock, ShapedAttention

NAMES = {'sasp_vit_tiny_patch16_224', 'sasp_vit_small_patch16_224', 'sasp_vit_base_patch16_224', 'sasp_vit_tiny_patch4_32',
         'sasp_vit_small_patch4_32'}


def test_registered_as_their_own_family_with_vit_cfgs():
    assert set(model_names('sasp')) == NAMES and set(timm.list_models('sasp_*')) == NAMES
    for name in NAMES:
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.paper_ids == 'arXiv:2311.01906' and cfg.classifier == 'head'
        assert cfg.input_size == ((3, 32, 32) if name.endswith('_32') else (3, 224, 224))


def _net(**kwargs):
    torch.manual_seed(0)
    return timm.create_model('sasp_vit_tiny_patch4_32', img_size=28, in_chans=1, num_classes=10, embed_dim=96, **kwargs).eval()


@pytest.mark.parametrize('qkv_bias', [False, True])
def test_fresh_attention_is_the_identity(qkv_bias):
    net = _net(qkv_bias=qkv_bias)
    tokens = torch.randn(3, 50, 96)
    for block in net.blocks:
        assert torch.allclose(block.attn(tokens), tokens, atol=1e-5)


def test_fresh_block_is_its_norm_plus_the_scaled_mlp():
    block = _net().blocks[5]
    x = torch.randn(2, 50, 96)
    u = block.norm1(x)
    assert torch.allclose(block(x), u + MLP_GAIN_INIT * block.mlp(u), atol=1e-5)


def test_fresh_net_passes_its_tokens_through_when_the_mlps_are_off():
    """With the MLP gains at zero a fresh net is a stack of identity attentions between LayerNorms: the last
    block's output is the LayerNorm of the patch tokens (LayerNorm of a LayerNorm output is itself; not quite
    for the class token, whose tiny initial variance is of the order of LayerNorm's eps)."""
    net = _net()
    for block in net.blocks:
        block.mlp_gain.data.zero_()
    images = torch.randn(2, 1, 28, 28)
    tokens = net.norm_pre(net._pos_embed(net.patch_embed(images)))
    assert torch.allclose(net.blocks(tokens)[:, 1:], net.blocks[0].norm1(tokens)[:, 1:], atol=1e-4)


def test_no_path_bypasses_the_norm_and_the_sub_blocks():
    """A residual block adds its input; zeroing the block's norm leaves this block's output independent of it."""
    block = _net().blocks[0]
    block.norm1.weight.data.zero_()
    block.norm1.bias.data.zero_()
    a, b = torch.randn(2, 50, 96), 10 * torch.randn(2, 50, 96)
    assert torch.equal(block(a), block(b))


def test_trained_attention_is_shaped():
    """Away from initialisation, the attention matrix is alpha I + beta softmax(q k^T / sqrt(d)) - gamma / T."""
    torch.manual_seed(1)
    attn = ShapedAttention(8, num_heads=2)
    torch.nn.init.normal_(attn.qk.weight)
    for gain in (attn.alpha, attn.beta, attn.gamma):
        gain.data.uniform_(0.5, 1.5)
    x = torch.randn(1, 5, 8)
    q, k = attn.qk(x).reshape(1, 5, 2, 2, 4).permute(2, 0, 3, 1, 4)
    softmax = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
    eye, uniform = torch.eye(5), torch.full((5, 5), 1 / 5)
    a = attn.alpha.view(1, 2, 1, 1) * eye + attn.beta.view(1, 2, 1, 1) * softmax - attn.gamma.view(1, 2, 1, 1) * uniform
    v = x.reshape(1, 5, 2, 4).transpose(1, 2)
    expected = (a @ v).transpose(1, 2).reshape(1, 5, 8)
    assert torch.allclose(attn(x), expected, atol=1e-5)


def test_masks_shape_c_like_the_softmax():
    """With ``is_causal`` or an ``attn_mask``, C is uniform over the keys each query may see: a fresh attention
    is still the identity, and a trained one is alpha I + beta masked-softmax - gamma masked-uniform."""
    tokens = torch.randn(2, 50, 96)
    causal = torch.ones(50, 50, dtype=torch.bool).tril()
    for block in _net().blocks[:3]:
        assert torch.allclose(block.attn(tokens, is_causal=True), tokens, atol=1e-5)
        assert torch.allclose(block.attn(tokens, attn_mask=causal), tokens, atol=1e-5)
    torch.manual_seed(2)
    attn = ShapedAttention(8, num_heads=2)
    torch.nn.init.normal_(attn.qk.weight)
    x = torch.randn(1, 5, 8)
    q, k = attn.qk(x).reshape(1, 5, 2, 2, 4).permute(2, 0, 3, 1, 4)
    allowed = torch.ones(5, 5, dtype=torch.bool).tril()
    softmax = torch.softmax((q @ k.transpose(-1, -2) / 2.0).masked_fill(~allowed, float('-inf')), dim=-1)
    uniform = allowed / allowed.sum(-1, keepdim=True)
    v = x.reshape(1, 5, 2, 4).transpose(1, 2)
    expected = ((torch.eye(5) + softmax - uniform) @ v).transpose(1, 2).reshape(1, 5, 8)
    assert torch.allclose(attn(x, is_causal=True), expected, atol=1e-5)
    assert torch.allclose(attn(x, attn_mask=allowed), expected, atol=1e-5)
    assert not torch.allclose(attn(x), expected, atol=1e-3)


def test_fewer_parameters_than_the_vit():
    sasp = sum(p.numel() for p in _net().parameters())
    vit = sum(p.numel() for p in timm.create_model('cifar_vit_tiny_patch4_32', img_size=28, in_chans=1, num_classes=10,
                                                   embed_dim=96).parameters())
    assert 0.8 < sasp / vit < 0.86  # no value or output projection: 10 C^2 per block instead of 12 C^2


def test_gains_are_kept_out_of_weight_decay():
    net = _net()
    optimizer = create_optimizer_v2(net, 'adamw', lr=1e-3, weight_decay=0.05)
    decayed = {id(p) for g in optimizer.param_groups if g['weight_decay'] > 0 for p in g['params']}
    block = net.blocks[0]
    assert not {id(p) for p in (block.attn.alpha, block.attn.beta, block.attn.gamma, block.attn_gain, block.mlp_gain)} & decayed
    assert id(block.attn.qk.weight) in decayed


@pytest.mark.parametrize('name, value', [('init_values', 1e-5), ('scale_attn_norm', True)])
def test_refused_arguments_name_themselves(name, value):
    with pytest.raises(ValueError, match=f'{name}={value!r} is not allowed'):
        SaspBlock(96, 3, **{name: value})
