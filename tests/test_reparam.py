"""Deployment form: reparameterized PNNH nets equal the trained form in eval mode, and are plain."""
import os
import tempfile

import pytest
import safetensors.torch
import timm
import torch
import torch.fx
import torch.nn as nn
from timm.utils import reparameterize_model

import timm_pnnh  # noqa: F401  (registers the models)
from timm_pnnh.models import coder_ops
from timm_pnnh.models.coders import CoderBesideLearner
from timm_pnnh.models.pnnh_resnet import PnnhBasicBlock, PnnhBottleneck
from timm_pnnh.models import registered_models
from timm_pnnh.reparam import adjoint_conv_weight, fold_batchnorms

PNNH_RESNETS = registered_models('pnnh_resnet*')
# full-size ImageNet bottleneck nets (the default and the _identity forms): slow tier
SLOW_DEPTHS = tuple(n for n in PNNH_RESNETS if n.split('_')[1] in ('resnet50', 'resnet101', 'resnet152'))
VARIANTS = [
    dict(coder_kernel=3),
    dict(coder_norm=True),
    dict(learner_ratio=0.5),
    dict(coder_ratio=0.5),
    dict(coder_kernel=3, coder_norm=True, learner_ratio=0.5, coder_ratio=0.5, coder_init='kaiming'),
    dict(deploy_form='merged'),
    dict(deploy_form='merged', coder_kernel=3, coder_norm=True, learner_ratio=0.5, coder_ratio=0.5),
]


def randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Random BN running statistics and affine parameters, including the zero-initialised last BN."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.uniform_(0.2, 0.6, generator=g)  # < 1 keeps 100+ plain layers' logits O(1)
                m.bias.normal_(0, 0.1, generator=g)


def input_size(name: str) -> int:
    return 32 if name.startswith(tuple(f'pnnh_resnet{d}' for d in (20, 32, 44, 56, 110))) else 64


def logits_pair(name: str, size: int = 0, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    randomise_norms(model)
    size = size or input_size(name)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        return model(x), reparameterize_model(model)(x), model, x


def assert_no_pnnh_blocks_left(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (PnnhBasicBlock, PnnhBottleneck)):
            assert m.plain is not None and not hasattr(m, 'coder')


@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_DEPTHS else n for n in PNNH_RESNETS])
def test_reparameterized_logits_match(name):
    assert len(PNNH_RESNETS) == 13  # 10 depths and the 3 exact-conversion bottleneck forms
    ref, fused, _, _ = logits_pair(name)
    assert ref.std() > 1e-2  # the logits are not trivially equal
    assert (ref - fused).abs().max().item() <= 1e-4


@pytest.mark.parametrize('kwargs', VARIANTS, ids=lambda kw: ','.join(f'{k}={v}' for k, v in kw.items()))
@pytest.mark.parametrize('name', ['pnnh_resnet20', pytest.param('pnnh_resnet50', marks=pytest.mark.slow)])
def test_reparameterized_variants_match(name, kwargs):
    ref, fused, _, _ = logits_pair(name, size=32, **kwargs)
    assert ref.std() > 1e-2
    assert (ref - fused).abs().max().item() <= 1e-4


def test_timm_reparameterize_model_folds_pnnh_blocks_into_a_copy():
    """timm's own reparameterize_model (validate.py --reparam) finds the blocks' reparameterize()."""
    torch.manual_seed(0)
    model = timm.create_model('pnnh_resnet20').eval()
    randomise_norms(model)
    x = torch.randn(2, 3, 32, 32)
    fused = reparameterize_model(model)
    assert_no_pnnh_blocks_left(fused)
    assert not isinstance(model.layer1[1].plain, nn.Sequential)  # a copy by default
    with torch.no_grad():
        assert (model(x) - fused(x)).abs().max().item() <= 1e-4


def assert_only_the_stem_batchnorm_left(model: nn.Module) -> None:
    """The deployed form: every block's BatchNorms folded (its own reparameterize()); the stem's stays,
    since timm's reparameterize_model calls reparameterize() on the model's submodules only."""
    assert [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)] == ['bn1']


@pytest.mark.parametrize('name', ['pnnh_resnet18', 'pnnh_resnet50'])
def test_reparameterize_folds_transition_batchnorms(name):
    _, _, model, x = logits_pair(name)
    fused = reparameterize_model(model)
    assert_only_the_stem_batchnorm_left(fused)
    assert_no_pnnh_blocks_left(fused)
    # residual transition blocks keep their shortcut, its projection folded into one conv with bias
    downsample = fused.layer2[0].downsample
    assert isinstance(downsample[0], nn.Conv2d) and downsample[0].bias is not None
    assert isinstance(downsample[1], nn.Identity)
    with torch.no_grad():
        assert (fused(x) - model(x)).abs().max().item() <= 1e-4


def test_reparameterize_is_idempotent_and_in_place_for_a_block():
    torch.manual_seed(0)
    block = PnnhBasicBlock(8, 8).eval()
    randomise_norms(block)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        ref = block(x)
        block.reparameterize()
        first = [p.clone() for p in block.parameters()]
        block.reparameterize()
        assert all(torch.equal(a, b) for a, b in zip(first, block.parameters()))
        assert (block(x) - ref).abs().max().item() <= 1e-5


def call_modules(module: nn.Module):
    graph = torch.fx.symbolic_trace(module).graph
    functions = [n.target for n in graph.nodes if n.op in ('call_function', 'call_method')]
    modules = [(n.target, type(module.get_submodule(n.target))) for n in graph.nodes if n.op == 'call_module']
    return modules, functions


def test_side_by_side_block_is_learner_convs_beside_coder_convs():
    """The default deployed form: act(learner(x) + adj(E) act(E x)), and nothing adds x itself."""
    torch.manual_seed(0)
    block = timm.create_model('pnnh_resnet20').eval().layer2[1]
    coder = block.coder.kernel().detach().clone()
    block.reparameterize()
    assert isinstance(block.plain, CoderBesideLearner)
    graph = torch.fx.symbolic_trace(block).graph
    modules, functions = call_modules(block)
    assert modules == [('plain.coder_act', nn.ReLU), ('plain.learner.conv1', nn.Conv2d), ('plain.learner.act1', nn.ReLU),
                       ('plain.learner.conv2', nn.Conv2d), ('plain.act', nn.ReLU)]
    assert functions == [coder_ops.conv, coder_ops.conv_add_]
    x = next(n for n in graph.nodes if n.op == 'placeholder')
    # the input feeds the encoder and the learner's first conv, nothing else (no identity term)
    assert sorted(str(u.target) for u in x.users) == sorted([str(coder_ops.conv), 'plain.learner.conv1'])
    learner = block.plain.learner
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in (learner.conv1, learner.conv2)] == [(32, 32, (3, 3))] * 2
    torch.testing.assert_close(block.plain.encoder.weight, coder)
    torch.testing.assert_close(block.plain.decoder.weight, adjoint_conv_weight(coder))
    assert block.plain.encoder.bias is not None and block.plain.decoder.bias is None


@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'channels_last'])
@pytest.mark.parametrize('kwargs', [{}, dict(coder_kernel=3, coder_norm=True, coder_ratio=0.5)], ids=['1x1', '3x3,norm'])
def test_side_by_side_matches_in_both_memory_formats(kwargs, channels_last):
    """The 1x1 coder runs as matrix products on channels_last input, as convolutions otherwise."""
    torch.manual_seed(0)
    block = PnnhBasicBlock(16, 16, **kwargs).eval()
    randomise_norms(block)
    x = torch.randn(3, 16, 7, 5)
    if channels_last:
        block, x = block.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = block(x)
        block.reparameterize()
        out = block(x)
    assert ref.std() > 1e-2
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'channels_last'])
def test_side_by_side_runs_under_bf16_autocast(channels_last):
    torch.manual_seed(0)
    model = timm.create_model('pnnh_resnet20').eval()
    randomise_norms(model)
    x = torch.randn(2, 3, 16, 16)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    deployed = reparameterize_model(model)
    with torch.no_grad(), torch.autocast('cpu', torch.bfloat16):
        ref, out = model(x).float(), deployed(x).float()
    assert ref.std() > 1e-2
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.05 * ref.abs().max().item())


def test_deploy_form_is_checked():
    with pytest.raises(ValueError, match=r"^deploy_form='fused' is not allowed: it must be one of \('side_by_side', 'merged'\)$"):
        timm.create_model('pnnh_resnet20', deploy_form='fused')


def test_merged_basic_block_is_conv_act_conv_act():
    block = timm.create_model('pnnh_resnet20', deploy_form='merged').eval().layer2[1]
    block.reparameterize()
    modules, functions = call_modules(block)
    assert modules == [('plain.conv1', nn.Conv2d), ('plain.act1', nn.ReLU),
                       ('plain.conv2', nn.Conv2d), ('plain.act2', nn.ReLU)]
    assert functions == []  # no add, no other op
    conv1, conv2 = block.plain.conv1, block.plain.conv2
    # conv1 = [E ; L1]: 32 coder + 32 learner channels, 3x3; conv2 = [adj(E) | L2]
    assert (conv1.in_channels, conv1.out_channels, conv1.kernel_size) == (32, 64, (3, 3))
    assert (conv2.in_channels, conv2.out_channels, conv2.kernel_size) == (64, 32, (3, 3))
    assert conv1.bias is not None and conv2.bias is not None


def test_reparameterized_basic_block_holds_coder_and_its_adjoint():
    torch.manual_seed(0)
    block = PnnhBasicBlock(8, 8, coder_kernel=3, coder_init='kaiming', coder_ratio=0.5, deploy_form='merged').eval()
    coder = block.coder.kernel().detach().clone()  # E (the Parameter times the coder_lr_scale gain)
    block.reparameterize()
    torch.testing.assert_close(block.plain.conv1.weight[:4], coder)
    torch.testing.assert_close(block.plain.conv2.weight[:, :4], adjoint_conv_weight(coder))
    torch.testing.assert_close(block.plain.conv2.weight[:, :4], coder.transpose(0, 1).flip(-1, -2))


def test_merged_bottleneck_is_three_convs_with_identity_middle():
    torch.manual_seed(0)
    block = timm.create_model('pnnh_resnet50', coder_ratio=0.5, deploy_form='merged').eval().layer1[1]
    randomise_norms(block)
    block.reparameterize()
    modules, functions = call_modules(block)
    assert [t for _, t in modules] == [nn.Conv2d, nn.ReLU] * 3
    assert functions == []
    middle = block.plain.conv2.weight
    coder_channels = 128  # 0.5 * 256
    eye = torch.zeros(coder_channels, coder_channels, 3, 3)
    nn.init.dirac_(eye)
    assert torch.equal(middle[:coder_channels, :coder_channels], eye)
    assert torch.count_nonzero(middle[:coder_channels, coder_channels:]) == 0
    assert torch.count_nonzero(middle[coder_channels:, :coder_channels]) == 0
    assert torch.count_nonzero(block.plain.conv2.bias[:coder_channels]) == 0


@pytest.mark.parametrize('deploy_form', ['side_by_side', 'merged'])
def test_reparameterize_grouped_bottleneck_matches(deploy_form):
    torch.manual_seed(0)
    block = PnnhBottleneck(256, 64, cardinality=4, base_width=32, coder_ratio=0.25, deploy_form=deploy_form).eval()
    randomise_norms(block)
    x = torch.randn(2, 256, 5, 5)
    with torch.no_grad():
        ref = block(x)
        block.reparameterize()
        assert (block(x) - ref).abs().max().item() <= 1e-4


def test_reparameterize_rejects_a_norm_without_running_stats():
    block = PnnhBasicBlock(8, 8, norm_layer=lambda c, **kw: nn.GroupNorm(2, c, **kw)).eval()
    with pytest.raises(ValueError, match='GroupNorm'):
        block.reparameterize()


@pytest.mark.slow
def test_onnx_export_of_reparameterized_model_runs_in_onnxruntime():
    ort = pytest.importorskip('onnxruntime', reason='onnxruntime is not installed (pip install onnxruntime)')
    pytest.importorskip('onnx', reason='onnx is not installed (pip install onnx)')
    pytest.importorskip('onnxscript', reason="torch.onnx.export's exporter needs onnxscript (pip install onnxscript)")
    ref, _, model, x = logits_pair('pnnh_resnet20')
    fused = reparameterize_model(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'pnnh_resnet20.onnx')
        torch.onnx.export(fused, (x,), path, input_names=['x'], output_names=['logits'], dynamo=True, verbose=False)
        session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
        out = session.run(None, {'x': x.numpy()})[0]
    assert out.shape == (2, 10)
    assert abs(torch.from_numpy(out) - ref).max().item() <= 1e-4


@pytest.mark.parametrize('name', ['cifar_resnet20', 'plain_resnet20', 'plain_resnet50'])
def test_baselines_deploy_with_batchnorms_folded(name):
    """The residual and plain baselines deploy as the PNNH nets do: their blocks fold their BatchNorms."""
    ref, fused_logits, model, x = logits_pair(name, size=32 if name.endswith('20') else 64)
    assert_only_the_stem_batchnorm_left(reparameterize_model(model))
    assert (ref - fused_logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize('name', ['pnnh_resnet20', 'cifar_resnet20', 'resnet18'])
def test_fold_batchnorms_leaves_none(name):
    """bench's comparison on equal terms: fold_batchnorms after the deployed form folds what is left
    (the stem; every BatchNorm of timm's own resnet18, which has no reparameterize())."""
    ref, _, model, x = logits_pair(name, size=32 if name.endswith('20') else 64)
    fused = fold_batchnorms(reparameterize_model(model))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        assert (fused(x) - ref).abs().max().item() <= 1e-4


# pnnh_resnet50's default tag is timm's converted resnet50 (implying a full-width coder): a PNNH-trained
# file of the default knobs loads under the .in1k tag
@pytest.mark.parametrize('name', ['pnnh_resnet20', 'pnnh_resnet50.in1k', 'plain_resnet20', 'cifar_resnet20'])
def test_folded_model_round_trips_through_a_file_and_create_model(name, tmp_path):
    """Fold, save as safetensors, load with create_model(inference_mode=True): the same logits."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    randomise_norms(model)
    x = torch.randn(2, 3, 32, 32)
    fused = reparameterize_model(model)
    path = str(tmp_path / 'folded.safetensors')
    safetensors.torch.save_file(fused.state_dict(), path)
    loaded = timm.create_model(name, inference_mode=True, pretrained=True, pretrained_cfg_overlay=dict(file=path)).eval()
    assert loaded.state_dict().keys() == fused.state_dict().keys()
    assert_only_the_stem_batchnorm_left(loaded)
    assert_no_pnnh_blocks_left(loaded)
    with torch.no_grad():
        ref = model(x)
        assert ref.std() > 1e-2
        torch.testing.assert_close(loaded(x), fused(x))
        assert (loaded(x) - ref).abs().max().item() <= 1e-4


def test_inference_mode_rejects_a_non_bool():
    with pytest.raises(ValueError, match="inference_mode='yes' is not allowed: it must be True or False"):
        timm.create_model('pnnh_resnet20', inference_mode='yes')


@pytest.mark.parametrize('kwargs', [dict(), dict(coder_kernel=3, coder_norm=True)], ids=['default', 'coder_kernel=3'])
@pytest.mark.parametrize('output_stride', [8, 16])
@pytest.mark.parametrize('name', ['pnnh_resnet18', pytest.param('pnnh_resnet50', marks=pytest.mark.slow)])
def test_dilated_blocks_fold_exactly(name, output_stride, kwargs):
    """``output_stride`` < 32 dilates the last stages' convolutions (coder included); the folded plain
    convs keep each dilation and padding, so the deployed net is the same function."""
    ref, fused, model, x = logits_pair(name, size=32, output_stride=output_stride, **kwargs)
    deployed = reparameterize_model(model)
    assert_no_pnnh_blocks_left(deployed)
    for net in (model, deployed):  # dilated, and folded with its dilations
        dilations = {m.dilation[0] for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1}
        assert max(dilations) == 32 // output_stride
    assert ref.std() > 1e-2
    assert (ref - fused).abs().max().item() <= 1e-4
    with torch.no_grad():
        assert (deployed(x) - ref).abs().max().item() <= 1e-4
