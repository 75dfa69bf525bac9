"""The command line, Fashion-MNIST discovery and the shared short training recipe."""
import re
from pathlib import Path

import pytest
import timm
import torch

from timm_pnnh import data
from timm_pnnh.catalog import catalog_table, describe
from timm_pnnh.cli import main
from timm_pnnh.models import registered_models
from timm_pnnh.training import Recipe, train_and_evaluate

MODELS_PAGE = Path(__file__).resolve().parents[1] / 'docs' / 'models.md'


def test_prepare_lays_out_debians_files_for_torchvision(fake_fashion_mnist):
    root = data.prepare_fashion_mnist(fake_fashion_mnist)
    raw = root / 'FashionMNIST' / 'raw'
    assert sorted(p.name for p in raw.iterdir()) == sorted(data.FILES)  # no temporary file left behind
    images, labels = data.load_fashion_mnist(root, train=True)
    assert images.shape == (256, 1, 28, 28) and labels.shape == (256,)
    assert data.load_fashion_mnist(root, train=False)[0].shape == (64, 1, 28, 28)


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, 'DEBIAN_DIR', tmp_path / 'nowhere')
    with pytest.raises(FileNotFoundError, match='apt-get install -y dataset-fashion-mnist'):
        data.prepare_fashion_mnist(tmp_path)
    assert main(['study', '--data-dir', str(tmp_path)]) == 2
    assert 'dataset-fashion-mnist' in capsys.readouterr().err


def test_training_is_seeded_and_learns():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (256,), generator=gen)
    images = torch.randn(256, 1, 16, 16, generator=gen) * 0.5 + labels[:, None, None, None].float()
    recipe = Recipe(steps=30, batch_size=32, lr=0.05)
    first = train_and_evaluate('pnnh_resnet20', (images, labels), (images[:64], labels[:64]), recipe, seed=3)
    again = train_and_evaluate('pnnh_resnet20', (images, labels), (images[:64], labels[:64]), recipe, seed=3)
    assert first.test_acc == again.test_acc and first.final_train_loss == again.final_train_loss
    assert first.test_acc > 80.0  # a separable two-class task; chance is 50%
    assert first.params == sum(p.numel() for p in timm.create_model(
        'pnnh_resnet20', num_classes=2, in_chans=1).parameters())


def _two_class_task(n=64):
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (n,), generator=gen)
    return torch.randn(n, 1, 16, 16, generator=gen) * 0.5 + labels[:, None, None, None].float(), labels


def test_a_stopped_run_continues_from_its_saved_state_to_the_same_end(tmp_path):
    """Stopped after step 3 of 6 (state saved after step 2), the run continues from step 2 and ends with
    the same weights, curve and accuracy as the run that was never stopped; the state file is never half written."""
    images, labels = _two_class_task()
    recipe = Recipe(steps=6, batch_size=16, lr=0.05)
    run = dict(train=(images, labels), test=(images[:32], labels[:32]), recipe=recipe, seed=1, eval_every=2)
    trained = {}
    straight = train_and_evaluate('pnnh_resnet20', **run, on_trained=lambda m: trained.update(straight=m.state_dict()))

    state = tmp_path / 'run.state'

    def stop_after_step_3(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate('pnnh_resnet20', **run, checkpoint=state, progress=stop_after_step_3)
    assert [p.name for p in tmp_path.iterdir()] == ['run.state']
    steps = []
    resumed = train_and_evaluate('pnnh_resnet20', **run, checkpoint=state, progress=lambda step, loss: steps.append(step),
                                 on_trained=lambda m: trained.update(resumed=m.state_dict()))
    assert steps == [2, 3, 4, 5] and resumed.resumed_step == 2 and straight.resumed_step is None
    assert resumed.curve == straight.curve and resumed.test_acc == straight.test_acc
    assert resumed.final_train_loss == straight.final_train_loss
    for name, tensor in trained['straight'].items():
        assert torch.equal(tensor, trained['resumed'][name]), name

    # a state of another run (another seed) is not continued from: that run starts at step 0
    steps.clear()
    train_and_evaluate('pnnh_resnet20', **dict(run, seed=2), checkpoint=state, progress=lambda step, loss: steps.append(step))
    assert steps[0] == 0
    state.write_bytes(b'cut off')
    steps.clear()
    train_and_evaluate('pnnh_resnet20', **run, checkpoint=state, progress=lambda step, loss: steps.append(step))
    assert steps[0] == 0
    with pytest.raises(ValueError, match='checkpoint=.* is not allowed with eval_every=0'):
        train_and_evaluate('pnnh_resnet20', **dict(run, eval_every=0), checkpoint=state)


@pytest.mark.parametrize('field, value', [('steps', 0), ('batch_size', -1), ('lr', float('nan')),
                                          ('warmup_fraction', 1.0)])
def test_recipe_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=f'{field}={value!r}'.replace('(', r'\(')):
        Recipe(**{field: value})


def test_models_command_lists_every_registered_model(capsys):
    assert main(['models', '--names-only']) == 0
    out = capsys.readouterr().out.split()
    # timm's registry, asked independently: every model whose entrypoint lives in this package, once each
    ours = [n for n in timm.list_models() if timm.models.model_entrypoint(n).__module__.startswith('timm_pnnh.')]
    assert sorted(out) == sorted(ours) and len(out) == len(set(out)) and len(out) >= 25
    assert all(n.split('_', 1)[0] in ('pnnh', 'plain', 'cifar', 'sasp') for n in out)


@pytest.mark.slow  # FLOPs of every registered model
def test_docs_models_table_is_the_commands_output():
    text = MODELS_PAGE.read_text()
    match = re.search(r'<!-- models-table:start -->\n(.*?)\n<!-- models-table:end -->', text, re.S)
    assert match, 'docs/models.md lacks the generated models table'
    assert match.group(1).strip() == catalog_table([describe(name) for name in registered_models()]).strip()
