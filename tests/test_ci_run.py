"""``.ci/run`` points ``TIMM_SCRIPTS_DIR`` at ``../shared/timm-scripts`` when that folder is beside the
checkout (so CI runs timm's own scripts), keeps a value already set, and leaves it unset without it."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize('shared, preset, expected', [
    (True, None, 'shared'),
    (True, '/elsewhere', '/elsewhere'),
    (False, None, ''),
])
def test_ci_run_finds_timms_scripts_beside_the_checkout(tmp_path, shared, preset, expected):
    checkout = tmp_path / 'checkout'
    (checkout / '.ci').mkdir(parents=True)
    shutil.copy(ROOT / '.ci' / 'run', checkout / '.ci' / 'run')
    (checkout / 'README.md').write_text('<!-- test-command -->\n```bash\necho "${TIMM_SCRIPTS_DIR:-}" > seen\n```\n')
    if shared:
        (tmp_path / 'shared' / 'timm-scripts').mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != 'TIMM_SCRIPTS_DIR'}
    env['TIMM_PNNH_CI_VENV'] = str(tmp_path / 'venv')
    if preset:
        env['TIMM_SCRIPTS_DIR'] = preset
    result = subprocess.run(['bash', str(checkout / '.ci' / 'run')], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    seen = (checkout / 'seen').read_text().strip()
    assert seen == (str((tmp_path / 'shared' / 'timm-scripts').resolve()) if expected == 'shared' else expected)
