"""``timm-pnnh compare``: train a few models with one shared recipe on Fashion-MNIST, side by side."""
import math

import torch

from timm_pnnh.data import load_fashion_mnist, require_fashion_mnist
from timm_pnnh.errors import UsageError, check_model, check_number
from timm_pnnh.files import markdown_table
from timm_pnnh.training import Recipe, train_and_evaluate

DEFAULT_MODELS = ('pnnh_resnet20', 'plain_resnet20', 'cifar_resnet20')


def check_arguments(args) -> None:
    """Every value, before the data is read (a UsageError names the first bad one)."""
    for name in args.models:
        check_model('--models', name)
    check_number('--epochs', args.epochs, above=0)
    check_number('--batch-size', args.batch_size, minimum=1)
    check_number('--lr', args.lr, minimum=0)
    require_fashion_mnist(args.data_dir)


def run(args) -> int:
    check_arguments(args)
    train_images, train_labels = load_fashion_mnist(args.data_dir, train=True)
    test = load_fashion_mnist(args.data_dir, train=False)
    if not 0 < args.train_size <= len(train_images):
        raise UsageError(f'--train-size={args.train_size} is not allowed: it must be in [1, {len(train_images)}]')
    subset = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(args.seed))[:args.train_size]
    train = (train_images[subset], train_labels[subset])
    recipe = Recipe(steps=math.ceil(args.epochs * args.train_size / args.batch_size), batch_size=args.batch_size, lr=args.lr)
    print(f'Fashion-MNIST: {args.train_size} training images x {args.epochs} epoch(s) = {recipe.steps} steps of '
          f'{recipe.batch_size}; test on {len(test[0])} images; seed {args.seed}; {torch.get_num_threads()} CPU threads')
    results = []
    for name in args.models:
        def progress(step, loss, name=name):
            if (step + 1) % max(1, recipe.steps // 5) == 0 or step + 1 == recipe.steps:
                print(f'  {name}: step {step + 1}/{recipe.steps} loss {loss:.3f}', flush=True)
        results.append(train_and_evaluate(name, train, test, recipe, seed=args.seed, progress=progress))
    print()
    print(markdown_table(['model', 'params', 'test acc (%)', 'final train loss'],
                         [[r.model, f'{r.params / 1e3:.0f}k', f'{r.test_acc:.2f}', f'{r.final_train_loss:.3f}'] for r in results]))
    print('\nFor throughput, measured side by side: timm-pnnh bench --model A --vs B')
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        'compare', help='train models side by side on Fashion-MNIST with one shared short recipe')
    parser.add_argument('--models', nargs='+', default=list(DEFAULT_MODELS))
    parser.add_argument('--epochs', type=float, default=1.0)
    parser.add_argument('--train-size', type=int, default=12800, help='training images drawn (by seed) for the epoch')
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--lr', type=float, default=0.1)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--data-dir', default=None, help='folder holding FashionMNIST/raw (default: ~/.cache/timm_pnnh/data; Debian\'s package is found on its own)')
    parser.set_defaults(func=run)
