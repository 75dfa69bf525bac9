"""Each command checks its own arguments in its module (``check_arguments``, called first by its
``run``); the command line only dispatches and turns a ``UsageError`` into one line and exit code 2."""
import re

import pytest

from timm_pnnh import bench, cli, report
from timm_pnnh.errors import UsageError
from timm_pnnh.study import command as study_command

# (command module, argv, the message's start: the parameter and its value)
CASES = [
    (study_command, ['study', '--batch-size', '0'], "--batch-size=0 is not allowed"),
    (study_command, ['study', '--depths', '21'], '--depths value 21 is not allowed'),
    (report, ['report', '--from', '{tmp}/missing.json'], r"--from='.*missing.json': no such file"),
    (bench, ['bench', '--model', 'cifar_resnet20', '--json', '{tmp}'], r"--json='.*' is a folder"),
]


@pytest.mark.parametrize('module, argv, message', CASES, ids=[' '.join(c[1][:1] + c[1][-2:-1]) for c in CASES])
def test_each_command_checks_its_own_arguments(module, argv, message, tmp_path, usage_error):
    argv = [a.format(tmp=tmp_path) for a in argv]
    args = cli.build_parser().parse_args(argv)
    assert args.func is module.run
    with pytest.raises(UsageError, match=message):
        module.check_arguments(args)
    with pytest.raises(UsageError, match=message):  # the command's run checks before any work
        module.run(args)
    assert re.match(message, usage_error(argv))  # one stderr line naming the parameter, exit code 2


def test_the_command_line_holds_no_command_specific_checks():
    assert not [name for name in vars(cli) if name.startswith('check_') or name == 'ARGUMENT_CHECKS']
