"""Deployment: remove the hidden channels of folded PNNH blocks that carry nothing.

A folded PNNH block (``reparameterize()``) is ``plain = conv1 -> act1 -> conv2 -> act2`` (bottleneck:
three convs): its hidden channels are the coder's C_c and the learner's C_l, all 3x3 wide. A hidden
channel carries nothing, and is removed (its row of the conv before, its column of the conv after),
when

* the next conv's weights on it are all zero, or the conv before gives it all-zero weights and a
  bias the activation maps to 0: exact for every input; or
* its activation is 0 at every position of every calibration batch (``batches``): exact on those
  images, an approximation elsewhere (a ReLU channel that never fires on the training data may fire
  on a test image), so score the pruned model before deploying it.

The result has the same layers, narrower. Training leaves few channels exactly dead (weight decay
shrinks weights, it does not zero them), so expect small savings from the exact rule alone.
"""
from typing import Dict, Iterable, List, Optional

import torch
import torch.nn as nn

__all__ = ['prune_dead_channels', 'folded_blocks']


def folded_blocks(model: nn.Module) -> Dict[str, nn.Sequential]:
    """``{block name: block.plain}`` for every block folded by ``reparameterize()``."""
    return {name: m.plain for name, m in model.named_modules() if isinstance(getattr(m, 'plain', None), nn.Sequential)}


def _hidden_layers(plain: nn.Sequential):
    """``(conv before, act, conv after)`` for each hidden activation of a folded block."""
    layers = list(plain.children())
    return [(layers[i], layers[i + 1], layers[i + 2]) for i in range(0, len(layers) - 2, 2)]


def _narrowed(conv: nn.Conv2d, out_keep: Optional[torch.Tensor] = None,
              in_keep: Optional[torch.Tensor] = None) -> nn.Conv2d:
    weight, bias = conv.weight, conv.bias
    if out_keep is not None:
        weight, bias = weight[out_keep], bias[out_keep]
    if in_keep is not None:
        weight = weight[:, in_keep]
    new = nn.Conv2d(weight.shape[1], weight.shape[0], conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    bias=True, device=weight.device, dtype=weight.dtype)
    new.weight.copy_(weight)
    new.bias.copy_(bias)
    return new


@torch.no_grad()
def prune_dead_channels(model: nn.Module, batches: Iterable[torch.Tensor] = ()) -> Dict[str, List[int]]:
    """Remove dead hidden channels of every folded block of ``model``, in place (eval form).

    ``batches``: calibration inputs (e.g. training images); none means the exact, data-free rule only.
    Returns ``{block name: [channels removed per hidden layer]}`` for every folded block.
    """
    blocks = folded_blocks(model)
    if not blocks:
        raise ValueError('model has no folded PNNH blocks: call timm_pnnh.reparam.reparameterize_model(model) first')
    for plain in blocks.values():
        for conv, _, _ in _hidden_layers(plain):
            if type(conv) is not nn.Conv2d or conv.groups != 1 or conv.bias is None:
                raise ValueError(f'cannot prune {conv}: a folded block holds dense nn.Conv2d layers with bias')
    fired: Dict[int, torch.Tensor] = {}  # id(act) -> which channels were ever non-zero
    hooks = []
    for plain in blocks.values():
        for conv, act, _ in _hidden_layers(plain):
            fired[id(act)] = torch.zeros(conv.out_channels, dtype=torch.bool, device=conv.weight.device)

            def record(module, inputs, output, key=id(act)):
                fired[key] |= (output != 0).flatten(2).any(2).any(0)
            hooks.append(act.register_forward_hook(record))
    was_training = model.training
    model.eval()
    calibrated = False
    try:
        for x in batches:
            model(x)
            calibrated = True
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    removed = {}
    for name, plain in blocks.items():
        removed[name] = []
        names = list(plain._modules)
        for i in range(0, len(names) - 2, 2):  # conv, act, next conv: re-read, the last step narrowed one
            conv, act, after = (plain._modules[n] for n in names[i:i + 3])
            carries = after.weight.flatten(2).ne(0).any(2).any(0)  # some weight of the next conv reads it
            zero_row = ~conv.weight.flatten(1).ne(0).any(1)
            carries &= ~(zero_row & (act(conv.bias.reshape(1, -1, 1, 1).clone()).flatten() == 0))  # constant act(b) = 0
            if calibrated:
                carries &= fired[id(act)]
            keep = carries.nonzero().flatten()
            removed[name].append(conv.out_channels - len(keep))
            plain._modules[names[i]] = _narrowed(conv, out_keep=keep)
            plain._modules[names[i + 2]] = _narrowed(after, in_keep=keep)
    return removed
