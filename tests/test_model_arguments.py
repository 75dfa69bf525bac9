"""Every keyword of timm's ResNet / VisionTransformer either works on a registered name or is refused
with one ValueError that names it (never Python's TypeError); so is every knob value of the wrong type."""
import functools
import inspect

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import PatchEmbed, SwiGLUPacked
from timm.models.resnet import BasicBlock, ResNet
from timm.models.vision_transformer import Block, VisionTransformer

import timm_pnnh  # noqa: F401
from timm_pnnh.models.pnnh_resnet import PNNH_KNOBS
from timm_pnnh.models.pnnh_vit import PNNH_VIT_KNOBS

# a plausible non-default value for each keyword
RESNET_VALUES = dict(
    block=BasicBlock, layers=(1, 1, 1, 1), num_classes=7, in_chans=1, output_stride=16, global_pool='max',
    cardinality=2, base_width=32, stem_width=32, stem_type='deep', replace_stem_pool=True, block_reduce_first=2,
    down_kernel_size=3, avg_down=True, channels=(8, 16, 32, 64), act_layer='silu', norm_layer='layernorm2d',
    aa_layer=nn.AvgPool2d, drop_rate=0.1, drop_path_rate=0.1, drop_block_rate=0.1, zero_init_last=False,
    block_args=dict(attn_layer='se'), device='cpu', dtype=torch.float64)
VIT_VALUES = dict(
    img_size=64, patch_size=8, in_chans=1, num_classes=7, global_pool='avg', embed_dim=96, depth=1, num_heads=2,
    mlp_ratio=2.0, qkv_bias=False, qk_norm=True, scale_attn_norm=True, scale_mlp_norm=True, proj_bias=False,
    init_values=1e-5, class_token=False, pos_embed='none', no_embed_class=True, reg_tokens=2, pre_norm=True,
    final_norm=False, fc_norm=True, pool_include_prefix=True, dynamic_img_size=True, dynamic_img_pad=True,
    drop_rate=0.1, pos_drop_rate=0.1, patch_drop_rate=0.1, proj_drop_rate=0.1, attn_drop_rate=0.1,
    drop_path_rate=0.1, weight_init='jax', fix_init=True, embed_layer=functools.partial(PatchEmbed, bias=False),
    embed_norm_layer='layernorm', norm_layer='rmsnorm', act_layer='relu', block_fn=Block, mlp_layer=SwiGLUPacked,
    attn_layer='diff', device='cpu', dtype=torch.float64)
# what timm's own model needs beside a value (token pooling needs the class token)
PAIRED = dict(class_token=dict(global_pool='avg'))
# small nets: the ImageNet ResNet and the ViT get narrow widths unless the keyword under test is the width
CASES = [('pnnh_resnet20', ResNet, dict(RESNET_VALUES, channels=(8, 16, 32)), {}),
         ('pnnh_resnet18', ResNet, RESNET_VALUES, dict(channels=(8, 16, 32, 64))),
         ('pnnh_vit_tiny_patch4_32', VisionTransformer, VIT_VALUES, dict(depth=1, embed_dim=48, num_heads=2))]
PARAMS = [pytest.param(name, key, values[key], base, id=f'{name}-{key}')
          for name, cls, values, base in CASES
          for key in inspect.signature(cls.__init__).parameters if key not in ('self', 'kwargs')]


def test_values_cover_every_keyword():
    for cls, values in ((ResNet, RESNET_VALUES), (VisionTransformer, VIT_VALUES)):
        assert set(inspect.signature(cls.__init__).parameters) - {'self'} == set(values)


@pytest.mark.parametrize('name,key,value,base', PARAMS)
def test_timm_keyword_builds_or_is_refused_by_name(name, key, value, base):
    kwargs = dict(base, **{key: value}, **PAIRED.get(key, {}))
    try:
        timm.create_model(name, **kwargs)
    except Exception as e:  # noqa: BLE001 - the test is about which exception
        assert isinstance(e, ValueError) and not isinstance(e, TypeError), f'{key}={value!r}: {type(e).__name__}: {e}'
        named = [key] + (list(value) if isinstance(value, dict) else [])
        assert any(n in str(e) for n in named), f'{key}={value!r}: the error does not name it: {e}'
        assert '\n' not in str(e), str(e)


# values of the wrong type for a knob whose default is of this type (None is left out: timm drops it)
WRONG_TYPES = {bool: (1, 0.0, 'True'), int: (1.0, True, '1'), float: (True, '1.0'), str: (1, True)}
KNOB_CASES = [('pnnh_resnet20', PNNH_KNOBS, {}), ('pnnh_vit_tiny_patch4_32', PNNH_VIT_KNOBS, dict(depth=1))]


@pytest.mark.parametrize('name,knob,value,base', [
    pytest.param(name, knob, value, base, id=f'{name}-{knob}={value!r}')
    for name, knobs, base in KNOB_CASES for knob, default in knobs.items() for value in WRONG_TYPES[type(default)]])
def test_knob_of_the_wrong_type_is_refused_by_name(name, knob, value, base):
    with pytest.raises(ValueError) as info:
        timm.create_model(name, **base, **{knob: value})
    assert not isinstance(info.value, TypeError)
    assert str(info.value).startswith(f'{knob}={value!r} is not allowed: it must be ') and '\n' not in str(info.value)


def test_knob_of_the_right_type_builds():
    timm.create_model('pnnh_resnet20', coder_kernel=3, coder_norm=True, coder_ratio=1, learner_ratio=0.5)
    timm.create_model('pnnh_vit_tiny_patch4_32', depth=1, coder_norm=True, zero_init_last=False, coder_ratio=2)
