"""Puts ``timm_pnnh_autoload.pth`` at the top of the wheel, i.e. into site-packages, for regular and
editable (``pip install -e .``) installs; everything else is in pyproject.toml.

A regular wheel takes what ``build_py`` leaves in ``build_lib``. An editable wheel (setuptools >= 64)
leaves the project files in place and writes only what is in the unpacked wheel folder, which is the
``install`` command's ``install_lib`` during ``editable_wheel``; the .pth goes there.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = 'timm_pnnh_autoload.pth'


class BuildPyWithPth(build_py):
    def _pth_target(self) -> Path:
        if getattr(self, 'editable_mode', False):
            return Path(self.get_finalized_command('install').install_lib) / PTH
        return Path(self.build_lib) / PTH

    def run(self):
        super().run()
        target = self._pth_target()
        target.parent.mkdir(parents=True, exist_ok=True)
        self.copy_file(PTH, str(target), preserve_mode=False)

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + ([] if getattr(self, 'editable_mode', False)
                                                        else [str(self._pth_target())])


setup(cmdclass={'build_py': BuildPyWithPth})
