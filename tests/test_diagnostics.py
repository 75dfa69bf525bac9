"""Input-retention measures on cases with known answers, block discovery, and the diagnose command."""
import csv
import json
import sys

import pytest
import timm
import torch
import torch.nn as nn

import timm_pnnh  # noqa: F401
from timm_pnnh import data
from timm_pnnh.cli import main
from timm_pnnh.diagnostics import (
    PLOT_MISSING, block_outputs, find_blocks, input_targets, linear_cka, plot_retention, retention, ridge_r2)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


class _Net(nn.Module):
    """``blocks`` applied in turn, then a mean-pooled linear head."""

    def __init__(self, blocks):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(1, 2)

    def forward(self, x):
        return self.head(self.blocks(x).mean((1, 2, 3))[:, None])


class _Zero(nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


def test_cka_of_a_matrix_with_itself_is_one():
    x = torch.randn(64, 20, generator=_gen())
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    x = torch.randn(64, 20, generator=_gen(0))
    y = x[:, :10] @ torch.randn(10, 15, generator=_gen(1)) + 0.5 * torch.randn(64, 15, generator=_gen(2))
    q, _ = torch.linalg.qr(torch.randn(15, 15, generator=_gen(3), dtype=torch.float64))
    base = linear_cka(x, y)
    assert 0.2 < base < 0.99  # neither trivial end
    assert linear_cka(x, y.double() @ q) == pytest.approx(base, abs=1e-9)
    assert linear_cka(x, 7.5 * y) == pytest.approx(base, abs=1e-9)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-12)


def test_cka_of_unrelated_or_constant_features_is_low_or_zero():
    x = torch.randn(256, 8, generator=_gen(0))
    assert linear_cka(x, torch.randn(256, 8, generator=_gen(1))) < 0.1
    assert linear_cka(x, torch.ones(256, 5)) == 0.0
    with pytest.raises(ValueError, match='same n'):
        linear_cka(x, x[:10])


def test_ridge_r2_recovers_a_linear_map_and_nothing_else():
    x = torch.randn(2, 500, 12, generator=_gen(0))
    w = torch.randn(12, 3, generator=_gen(1))
    assert ridge_r2(x[0], x[0] @ w + 1, x[1], x[1] @ w + 1) > 0.999
    noise = torch.randn(2, 500, 3, generator=_gen(2))
    assert abs(ridge_r2(x[0], noise[0], x[1], noise[1])) < 0.05
    assert abs(ridge_r2(torch.ones(500, 12), noise[0], torch.ones(500, 12), noise[1])) < 0.02
    # few rows, many correlated features: the cross-validated penalty does not overfit a tiny fixed one does
    wide = torch.randn(2, 40, 8, generator=_gen(3)) @ torch.randn(8, 200, generator=_gen(4))
    wide = wide + 0.01 * torch.randn(2, 40, 200, generator=_gen(5))
    target = wide[..., :5] @ torch.randn(5, 2, generator=_gen(6)) + 0.5 * torch.randn(2, 40, 2, generator=_gen(7))
    chosen, fixed = ridge_r2(wide[0], target[0], wide[1], target[1]), ridge_r2(wide[0], target[0], wide[1], target[1], 1e-6)
    assert chosen > 0.5 and chosen >= fixed - 1e-9
    assert ridge_r2(wide[0], noise[0, :40], wide[1], noise[1, :40]) > -0.2


def test_input_targets_are_the_cells_each_position_covers():
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    rows = input_targets(image, (2, 2))
    assert rows.shape == (4, 4)
    assert rows[0].tolist() == [0, 1, 4, 5] and rows[3].tolist() == [10, 11, 14, 15]
    assert torch.equal(input_targets(image, (4, 4)), image.reshape(16, 1))
    assert input_targets(torch.zeros(2, 3, 28, 28), (8, 8)).shape == (2 * 64, 3 * 16)  # resized to 32x32


def test_identity_network_keeps_the_whole_input():
    images = torch.rand(2, 64, 1, 8, 8, generator=_gen()) + 0.1  # non-negative, as after a ReLU
    rows = retention(_Net([nn.Identity(), nn.Identity(), nn.Identity()]), images[0], images[1], batch_stats=False)
    assert [r['index'] for r in rows] == [1, 2, 3] and [r['name'] for r in rows] == ['blocks.0', 'blocks.1', 'blocks.2']
    for r in rows:
        assert r['r2'] > 0.999 and r['cka'] == pytest.approx(1.0, abs=1e-9) and r['alive'] == 1.0


def test_constant_network_keeps_nothing():
    images = torch.rand(2, 64, 1, 8, 8, generator=_gen()) + 0.1
    rows = retention(_Net([nn.Identity(), _Zero(), nn.Identity()]), images[0], images[1], batch_stats=False)
    assert rows[0]['r2'] > 0.999
    for r in rows[1:]:
        assert abs(r['r2']) < 0.02 and r['cka'] == 0.0 and r['alive'] == 0.0


@pytest.mark.slow
def test_plain_net_loses_the_input_faster_than_residual_and_pnnh_at_init():
    images = torch.randn(2, 48, 1, 16, 16, generator=_gen())
    last = {}
    for name in ('plain_resnet56', 'cifar_resnet56', 'pnnh_resnet56'):
        torch.manual_seed(0)
        rows = retention(timm.create_model(name, num_classes=10, in_chans=1), images[0], images[1], batch_stats=True)
        assert len(rows) == 27 and rows[0]['name'] == 'layer1.0' and rows[-1]['name'] == 'layer3.8'
        last[name] = rows[-1]
    assert last['plain_resnet56']['r2'] < 0.05 and min(last['cifar_resnet56']['r2'], last['pnnh_resnet56']['r2']) > 0.1
    assert last['plain_resnet56']['cka'] < min(last['cifar_resnet56']['cka'], last['pnnh_resnet56']['cka']) - 0.2


def test_blocks_of_timm_resnet_and_vit_and_the_fallbacks():
    assert [n for n, _ in find_blocks(timm.create_model('resnet18'))] == [
        f'layer{s}.{i}' for s in (1, 2, 3, 4) for i in (0, 1)]
    vit = timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=8, depth=2, num_classes=10)
    outs = block_outputs(vit.eval(), torch.randn(3, 3, 32, 32, generator=_gen()))
    assert [(n, tuple(o.shape)) for n, o in outs] == [('blocks.0', (3, 192, 4, 4)), ('blocks.1', (3, 192, 4, 4))]
    convnext = timm.create_model('convnext_atto', num_classes=10)
    assert len(find_blocks(convnext)) == sum(len(s.blocks) for s in convnext.stages)
    with pytest.raises(ValueError, match='no blocks found'):
        block_outputs(nn.Conv2d(1, 1, 1), torch.zeros(1, 1, 4, 4))


def test_batch_statistics_leave_the_model_unchanged():
    model = timm.create_model('plain_resnet20', num_classes=10, in_chans=1).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(2, 16, 1, 12, 12, generator=_gen())
    retention(model, images[0], images[1], batch_stats=True)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_plot_is_skipped_with_a_message_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)
    assert plot_retention(tmp_path / 'x.png', {'m': [dict(index=1, r2=1.0, cka=1.0, alive=1.0)]}) == PLOT_MISSING
    assert not list(tmp_path.iterdir())


def test_diagnose_command_writes_json_csv_and_table(tmp_path, monkeypatch, capsys, usage_error):
    monkeypatch.setattr(data, 'DEBIAN_DIR', tmp_path / 'nowhere')
    checkpoint = tmp_path / 'resnet20.pth'
    torch.manual_seed(5)
    torch.save(timm.create_model('cifar_resnet20', num_classes=10, in_chans=1).state_dict(), checkpoint)
    out = tmp_path / 'out'
    assert usage_error(['diagnose', '--model', 'plain_resnet20', '--model', 'cifar_resnet20', '--checkpoint', checkpoint,
                        '--data-dir', tmp_path, '--out', out]).startswith('--checkpoint given 1 times for 2 --model')
    code = main(['diagnose', '--model', 'plain_resnet20', '--model', 'pnnh_resnet20', '--batch-size', '8',
                 '--img-size', '12', '--data-dir', str(tmp_path), '--out', str(out)])
    assert code == 0
    text = capsys.readouterr()
    assert 'synthetic: seeded N(0, 1) images' in text.out and '| plain_resnet20 | 9 |' in text.out
    result = json.loads((out / 'diagnose.json').read_text())
    assert list(result['blocks']) == ['plain_resnet20', 'pnnh_resnet20']
    assert result['models']['pnnh_resnet20']['norm_stats'] == 'batch'
    with open(out / 'diagnose.csv') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 18 and rows[0]['name'] == 'layer1.0'
    assert (out / 'diagnose.png').is_file() == _has_matplotlib()
    # from a checkpoint: running statistics, the checkpoint's weights
    assert main(['diagnose', '--model', 'cifar_resnet20', '--checkpoint', str(checkpoint), '--batch-size', '8',
                 '--img-size', '12', '--data-dir', str(tmp_path), '--out', str(out)]) == 0
    meta = json.loads((out / 'diagnose.json').read_text())['models']
    assert [m['state'] for m in meta.values()] == ['checkpoint'] and list(meta.values())[0]['norm_stats'] == 'running'


def _has_matplotlib():
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        return False
