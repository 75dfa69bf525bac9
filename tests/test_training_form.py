"""The training form of the PNNH blocks: summed branches, exact gradients, no per-step weight copy,
a coder that saves no feature map of its own, one graph under torch.compile."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import GELU, DropPath
from timm.models.resnet import BasicBlock
from timm.utils.model import reparameterize_model
from torch.profiler import ProfilerActivity, profile

import timm_pnnh  # noqa: F401  (registers the models)
from timm_pnnh.errors import UsageError
from timm_pnnh.models import coder_ops
from timm_pnnh.models.coder_ops import relu_coder
from timm_pnnh.models.pnnh_resnet import PnnhBasicBlock, PnnhBottleneck


def reference(block, x):
    """The block's equations written out of place (see the block docstrings)."""
    act = block.act1
    z = block.coder.encode(x)
    if isinstance(block, PnnhBasicBlock):
        coded = block.coder.decode(act(z.clone()))
        learned = block.bn2(block.conv2(act(block.bn1(block.conv1(x)))))
        learned = learned if block.drop_path is None else block.drop_path(learned)
    else:
        coded = block.coder.decode(act(act(z.clone()).clone()))
        learned = block.bn3(block.conv3(act(block.bn2(block.conv2(act(block.bn1(block.conv1(x))))))))
    return act(coded + learned)


@pytest.mark.parametrize('act_layer', [nn.ReLU, GELU])
@pytest.mark.parametrize('make', [
    lambda act: PnnhBasicBlock(8, 8, act_layer=act, drop_path=DropPath(0.5), coder_kernel=3, coder_norm=True),
    lambda act: PnnhBasicBlock(8, 8, act_layer=act, coder_kernel=3, dilation=2, coder_ratio=0.5),
    lambda act: PnnhBasicBlock(8, 8, act_layer=act, coder_lr_scale=1.0),
    lambda act: PnnhBottleneck(32, 8, act_layer=act, coder_ratio=0.25),
], ids=['basic-norm', 'basic-dilated', 'basic-full-lr', 'bottleneck'])
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
    # forward: encode, decode and the two learner convs; backward: the coder recomputes its code and
    # applies the decoder's adjoint (x needs no gradient here); the rest is convolution_backward
    assert convs == [6]
    assert copies == []


@pytest.mark.parametrize('kernel_size, dilation, gain, memory_format, matmul_1x1', [
    (1, 1, 0.3, torch.contiguous_format, True), (1, 1, 0.3, torch.channels_last, True),  # convolutions / matrix products
    (1, 1, 0.3, torch.channels_last, False),  # 1x1 convolutions on channels_last, asked for (coder_ops.MATMUL_1X1)
    (3, 1, 1.0, torch.contiguous_format, True), (3, 2, 0.5, torch.channels_last, True)])
def test_relu_coder_gradcheck(kernel_size, dilation, gain, memory_format, matmul_1x1, monkeypatch):
    monkeypatch.setattr(coder_ops, 'MATMUL_1X1', matmul_1x1)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64).to(memory_format=memory_format).requires_grad_()
    weight = torch.randn(2, 3, kernel_size, kernel_size, dtype=torch.float64, requires_grad=True)
    padding = dilation * (kernel_size - 1) // 2
    assert torch.autograd.gradcheck(lambda x, w: relu_coder(x, w, gain, padding, dilation), (x, weight))
    kernel = weight * gain
    want = F.conv_transpose2d(F.relu(F.conv2d(x, kernel, None, 1, padding, dilation)), kernel, None, 1, padding,
                              0, 1, dilation)
    torch.testing.assert_close(relu_coder(x, weight, gain, padding, dilation), want)
    # the gradients to fp64 rounding, not only to gradcheck's finite-difference tolerance
    upstream = torch.randn_like(want)
    got = torch.autograd.grad(relu_coder(x, weight, gain, padding, dilation), (x, weight), upstream)
    expected = torch.autograd.grad(want, (x, weight), upstream)
    for g, e in zip(got, expected):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def saved_feature_maps(module, x):
    """Bytes autograd saves for backward in one forward (parameters excluded, each storage once)."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x).sum()
    return sum(saved.values())


def test_coder_saves_no_feature_map_of_its_own():
    """With the recomputing coder a PNNH block keeps what timm's residual BasicBlock keeps."""
    torch.manual_seed(0)
    x = torch.randn(4, 16, 8, 8)
    pnnh, residual = PnnhBasicBlock(16, 16).train(), BasicBlock(16, 16).train()
    recomputing = saved_feature_maps(pnnh, x)
    pnnh.coder.recompute = False
    autograd_form = saved_feature_maps(pnnh, x)
    assert recomputing <= saved_feature_maps(residual, x)
    # autograd keeps the activated code (one C-wide map) and E = gain * weight
    assert autograd_form - recomputing == (x.numel() + pnnh.coder.weight.numel()) * 4


@pytest.mark.parametrize('coder_kernel', [1, 3])  # matrix products / convolutions
def test_recompute_matches_autograd_form_in_channels_last_and_bf16(coder_kernel):
    torch.manual_seed(0)
    model = timm.create_model('pnnh_resnet20', coder_kernel=coder_kernel).train().to(memory_format=torch.channels_last)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.0)
    x = torch.randn(4, 3, 16, 16).to(memory_format=torch.channels_last)
    coders = [m.coder for m in model.modules() if isinstance(m, PnnhBasicBlock)]
    for dtype in (torch.float32, torch.bfloat16):
        results = []
        for recompute in (True, False):
            for coder in coders:
                coder.recompute = recompute
            with torch.autocast('cpu', dtype, enabled=dtype != torch.float32):
                loss = model(x).float().logsumexp(1).mean()
            loss.backward()
            results.append((loss.detach(), coders[0].weight.grad.clone(), coders[-1].weight.grad.clone(),
                            model.conv1.weight.grad.clone()))
            model.zero_grad()
        tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=0.05, atol=2e-3)
        for got, want in zip(*results):
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, want, **tol)


def test_pnnh_resnet_compiles_to_one_graph():
    torch._dynamo.reset()
    model = timm.create_model('pnnh_resnet20').train()
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 32, 32))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_the_1x1_coder_as_convolutions_equals_the_matrix_products(monkeypatch):
    """``coder_ops.MATMUL_1X1 = False`` runs a channels_last 1x1 coder as convolutions, in training and
    deployed, with the same loss, gradients and deployed output."""
    torch.manual_seed(0)
    initial = timm.create_model('pnnh_resnet20').to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 16, 16).to(memory_format=torch.channels_last)
    results, calls = [], []
    monkeypatch.setattr(coder_ops, '_rows', lambda t, rows=coder_ops._rows: calls.append(1) or rows(t))
    for matmul_1x1 in (True, False):
        monkeypatch.setattr(coder_ops, 'MATMUL_1X1', matmul_1x1)
        calls.clear()
        model = copy.deepcopy(initial).train()
        model(x).logsumexp(1).mean().backward()
        with torch.no_grad():
            out = reparameterize_model(copy.deepcopy(initial).eval())(x)
        results.append((model.conv1.weight.grad, model.layer1[0].coder.weight.grad, out))
        assert bool(calls) == matmul_1x1
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_the_1x1_coder_form_follows_the_cpu_by_default(monkeypatch):
    """``MATMUL_1X1 = None`` (the default): matrix products on an Intel CPU with MKL and on other devices,
    oneDNN's convolutions on other CPUs; True or False forces one; only a 1x1 coder on channels_last input
    can run as matrix products."""
    monkeypatch.setattr(coder_ops, 'MATMUL_1X1', None)
    monkeypatch.setattr(coder_ops, '_matmul_1x1_env', None)  # TIMM_PNNH_MATMUL_1X1 unset
    x = torch.randn(2, 4, 3, 3).to(memory_format=torch.channels_last)
    one, three = torch.randn(2, 4, 1, 1), torch.randn(2, 4, 3, 3)
    for intel in (True, False):
        monkeypatch.setattr(coder_ops, 'MKL_ON_INTEL', intel)
        assert coder_ops._as_rows(x, one) is intel and coder_ops.matmul_1x1_on('cpu') is intel
        assert coder_ops._as_rows(x.to('meta'), one.to('meta'))  # not a CPU
        assert not coder_ops._as_rows(x, three) and not coder_ops._as_rows(x.contiguous(), one)
        for forced in (True, False):
            monkeypatch.setattr(coder_ops, 'MATMUL_1X1', forced)
            assert coder_ops._as_rows(x, one) is forced
        monkeypatch.setattr(coder_ops, 'MATMUL_1X1', None)


@pytest.mark.parametrize('value, expected', [('', None), ('1', True), ('0', False)])
def test_the_1x1_coder_form_can_be_forced_from_the_environment(value, expected, monkeypatch):
    """The variable is read on first use; Python's ``MATMUL_1X1`` wins over it."""
    monkeypatch.setenv('TIMM_PNNH_MATMUL_1X1', value)
    monkeypatch.setattr(coder_ops, '_matmul_1x1_env', coder_ops._UNREAD)
    monkeypatch.setattr(coder_ops, 'MATMUL_1X1', None)
    monkeypatch.setattr(coder_ops, 'MKL_ON_INTEL', False)
    assert coder_ops.matmul_1x1_on('cpu') is bool(expected) and coder_ops.matmul_1x1_env() is expected
    monkeypatch.setattr(coder_ops, 'MATMUL_1X1', not expected)
    assert coder_ops.matmul_1x1_on('cpu') is (not expected)


def test_a_bad_1x1_coder_form_in_the_environment_says_what_is_allowed(monkeypatch):
    monkeypatch.setenv('TIMM_PNNH_MATMUL_1X1', 'yes')
    monkeypatch.setattr(coder_ops, '_matmul_1x1_env', coder_ops._UNREAD)
    monkeypatch.setattr(coder_ops, 'MATMUL_1X1', None)
    with pytest.raises(UsageError, match=r"^TIMM_PNNH_MATMUL_1X1='yes' is not allowed: it must be 1 \(matrix products\), "
                                         r"0 \(convolutions\) or unset \(chosen by the CPU\)$"):
        coder_ops.matmul_1x1_on('cpu')


def test_a_bad_1x1_coder_form_in_the_environment_ends_a_command_in_one_line():
    """The package imports with any value; ``timm-pnnh`` says what is wrong in one line, exit code 2."""
    env = dict(os.environ, TIMM_PNNH_MATMUL_1X1='yes', OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get('PYTHONPATH', '')]))
    result = subprocess.run([sys.executable, '-m', 'timm_pnnh', 'models', '--names-only'], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and result.stdout == '' and 'Traceback' not in result.stderr
    assert result.stderr.splitlines() == [
        "timm-pnnh models: error: TIMM_PNNH_MATMUL_1X1='yes' is not allowed: it must be 1 (matrix products), "
        "0 (convolutions) or unset (chosen by the CPU)"]
