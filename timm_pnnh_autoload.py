"""Registers the timm-pnnh models as soon as timm is imported, in any Python process, with no import step.

timm has no plugin discovery: a model from another package is unknown to ``timm.create_model``, and to
timm's ``train.py`` / ``validate.py`` / ``benchmark.py``, until that package is imported. The installed
``timm_pnnh_autoload.pth`` runs ``import timm_pnnh_autoload`` at interpreter start; this module (standard
library only, nothing else imported) puts a finder at the front of ``sys.meta_path`` that answers for the
module ``timm`` alone. When ``timm`` has finished executing, it imports ``timm_pnnh``, which registers the
models. Processes that never import timm run none of our code beyond this file.

* ``TIMM_PNNH_AUTOLOAD=0`` switches it off (then ``import timm_pnnh`` or ``timm-pnnh run`` as before).
* The finder removes itself on first use; ``import timm_pnnh`` from inside timm's import (timm_pnnh imports
  timm first) finds the package already importing and does not recurse.
* A failure to import ``timm_pnnh`` never breaks ``import timm``: it becomes one line on stderr.
"""
import os
import sys

ENV = 'TIMM_PNNH_AUTOLOAD'


def _register_models() -> None:
    try:
        import timm_pnnh  # noqa: F401  (registers the models with timm)
    except Exception as e:  # never let the plugin break timm; stderr, which no warning filter can hide
        sys.stderr.write(f'timm-pnnh: the models were not registered with timm ({type(e).__name__}: {e}); '
                         f'import timm_pnnh to see the error, or set {ENV}=0\n')


class AfterTimmImport:
    """``sys.meta_path`` finder for ``timm`` only: the other finders find it, and its loader, once it has
    executed the package, imports ``timm_pnnh``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != 'timm':
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        import importlib.util
        spec = importlib.util.find_spec('timm')
        if spec is None or spec.loader is None or not hasattr(spec.loader, 'exec_module'):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register_models()

        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    """Add the finder, unless switched off or timm is imported already."""
    if os.environ.get(ENV, '1').strip() == '0' or 'timm' in sys.modules:
        return
    if not any(isinstance(f, AfterTimmImport) for f in sys.meta_path):
        sys.meta_path.insert(0, AfterTimmImport())


install()
