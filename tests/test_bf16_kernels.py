"""bf16 on a CPU without bf16 instructions: a bf16 forward and backward whose matrix products run in
torch's fp32 kernels (``training.Bf16ThroughFp32Kernels``)."""
import pytest
import timm
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from timm_pnnh import training
from timm_pnnh.training import Bf16ThroughFp32Kernels, Recipe, bf16_kernels, precision, train_and_evaluate

CPU = torch.device('cpu')


def test_a_product_is_the_fp32_product_of_the_bf16_operands_rounded_to_bf16():
    gen = torch.Generator().manual_seed(0)
    a, b, bias = (torch.randn(*shape, generator=gen).bfloat16() for shape in ((64, 96), (96, 48), (48,)))
    with Bf16ThroughFp32Kernels():
        product, affine = a @ b, torch.addmm(bias, a, b)
    assert product.dtype == affine.dtype == torch.bfloat16
    assert torch.equal(product, (a.float() @ b.float()).bfloat16())
    assert torch.equal(affine, torch.addmm(bias.float(), a.float(), b.float()).bfloat16())
    # torch's own bf16 kernel accumulates in fp32 too: the two differ by at most one rounding of the result
    own = a @ b
    assert ((product.float() - own.float()).abs() <= own.float().abs() * 2 ** -7 + 1e-6).all()


class _SeenDtypes(TorchDispatchMode):
    """Records the input dtypes of every op that reaches the kernels."""
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append((func, {a.dtype for a in args if isinstance(a, torch.Tensor)}))
        return func(*args, **(kwargs or {}))


def _step(model, x, y, amp, mode=None):
    model.zero_grad(set_to_none=True)
    with mode or bf16_kernels(CPU, None):
        with training.autocast(CPU, amp):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        loss.backward()
    return logits.dtype, loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize('name, kwargs, channels_last', [
    ('sasp_vit_tiny_patch4_32', dict(img_size=28, embed_dim=96, depth=3), False),  # shaped attention
    ('pnnh_vit_tiny_patch4_32', dict(img_size=28, embed_dim=96, depth=3), False),  # fused attention
    ('pnnh_resnet20', {}, True),  # convolutions, the study's memory format
])
def test_a_training_step_matches_torchs_bf16_kernels_and_no_bf16_product_reaches_a_kernel(name, kwargs, channels_last):
    """Loss and gradients through the fp32 kernels are those of torch's own bf16 kernels up to the order of
    the fp32 sums, much closer than an fp32 step is; every product of the step meets its kernel in fp32."""
    torch.manual_seed(0)
    model = timm.create_model(name, in_chans=1, num_classes=10, **kwargs)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    seen = _SeenDtypes()
    with seen:
        dtype, loss, grads = _step(model, x, y, 'bf16', Bf16ThroughFp32Kernels())
    _, own_loss, own_grads = _step(model, x, y, 'bf16')
    _, fp32_loss, fp32_grads = _step(model, x, y, None)
    assert dtype == torch.bfloat16
    products = [dtypes for func, dtypes in seen.seen if func in Bf16ThroughFp32Kernels.OPS]
    assert products and all(torch.bfloat16 not in dtypes for dtypes in products)
    distance = ((grads - own_grads).norm() / own_grads.norm()).item()
    fp32_distance = ((fp32_grads - own_grads).norm() / own_grads.norm()).item()
    assert distance < 5e-3 and distance < fp32_distance / 2, (distance, fp32_distance)
    assert abs(loss - own_loss) < 1e-3


@pytest.mark.parametrize('amp, device, native, used', [
    ('bf16', 'cpu', False, True),
    ('bf16', 'cpu', True, False),  # the CPU's own bf16 instructions
    (None, 'cpu', False, False),  # fp32
    ('bf16', 'cuda', False, False),  # a GPU computes bf16 itself
])
def test_the_fp32_kernels_are_used_only_for_bf16_on_a_cpu_without_it(amp, device, native, used, monkeypatch):
    monkeypatch.setattr(training, 'cpu_has_native_bf16', lambda: native)
    assert training.bf16_through_fp32(torch.device(device), amp) is used
    assert isinstance(bf16_kernels(torch.device(device), amp), Bf16ThroughFp32Kernels) is used
    with precision(torch.device('cpu'), amp):
        assert torch.is_autocast_enabled('cpu') is (amp == 'bf16')


def test_a_bf16_run_on_a_cpu_without_bf16_instructions_runs_forward_backward_and_scoring_through_them(monkeypatch):
    seen = []

    class Counting(Bf16ThroughFp32Kernels):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in self.OPS and any(isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 for a in args):
                seen.append((func, torch.is_grad_enabled()))
            return super().__torch_dispatch__(func, types, args, kwargs)

    monkeypatch.setattr(training, 'cpu_has_native_bf16', lambda: False)
    monkeypatch.setattr(training, 'Bf16ThroughFp32Kernels', Counting)
    images, labels = torch.randn(16, 1, 8, 8), torch.randint(0, 2, (16,))
    result = train_and_evaluate('pnnh_resnet20', (images, labels), (images[:8], labels[:8]),
                                Recipe(steps=2, batch_size=8, amp='bf16', channels_last=True, eval_batch_size=8))
    assert result.diverged_step is None
    convolution, backward = torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default
    assert (convolution, True) in seen and backward in {func for func, _ in seen}  # the training steps
    assert (convolution, False) in seen  # the scoring, under no_grad
