"""Model-building helpers shared by the model families: argument checks and entrypoint registration."""
import inspect
from typing import Any, Callable, Dict, Iterable, Tuple

from timm.models import build_model_with_cfg, register_model

__all__ = ['UnknownModelArgument', 'BUILDER_ARGS', 'check_model_kwargs', 'register_entrypoint']

# arguments that create_model / build_model_with_cfg consume before the model class sees them
BUILDER_ARGS = frozenset(set(inspect.signature(build_model_with_cfg).parameters) - {'model_cls', 'variant', 'pretrained', 'kwargs'}
                         | {'features_only', 'out_indices', 'feature_cls', 'pruned'})


class UnknownModelArgument(TypeError, ValueError):
    """An argument the model does not take: a ValueError that names it, and the TypeError timm's API
    contract (its tests/test_models.py) expects for unknown constructor arguments."""


def check_model_kwargs(variant: str, kwargs: Dict[str, Any], model_args: Iterable[str]) -> Tuple[str, ...]:
    """Raise UnknownModelArgument for any of ``kwargs`` that neither the model nor timm's builder takes."""
    allowed = tuple(sorted((set(model_args) | BUILDER_ARGS) - {'self', 'kwargs', 'args'}))
    for name, value in kwargs.items():
        if name not in allowed:
            raise UnknownModelArgument(
                f'{variant}: unknown model argument {name}={value!r}; allowed: {", ".join(allowed)}')
    return allowed


def register_entrypoint(module_globals: Dict[str, Any], name: str, create: Callable, doc: str) -> None:
    """Register ``name`` with timm as a function ``name(pretrained=False, **kwargs)`` of the calling
    module (its ``globals()``), which calls ``create(pretrained, **kwargs)``."""

    def entrypoint(pretrained: bool = False, **kwargs):
        return create(pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = module_globals['__name__']
    entrypoint.__doc__ = doc
    module_globals[name] = register_model(entrypoint)
