import subprocess
import sys

import pytest

from siattn import __version__
from siattn.cli import COMMANDS, build_parser, main


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_every_command_is_registered_with_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)
    for name, command_parser in sub.choices.items():
        assert command_parser.description, name
        command_parser.format_help()


def test_python_dash_m_behaves_like_the_console_script():
    out = subprocess.run([sys.executable, "-m", "siattn", "--help"], capture_output=True, text=True, check=True)
    for name in COMMANDS:
        assert name in out.stdout


def test_unknown_command_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_optional_command_without_its_extra_says_what_to_install():
    """Without transformers, `siattn hf-train` is left out of the command line and asking for it names the extra;
    the other commands still load."""
    code = ("import sys; sys.modules['transformers'] = None\n"
            "from siattn.cli import main\n"
            "main(['eval', '--help'])\n")  # argparse prints the help and exits 0
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--checkpoint" in proc.stdout, proc.stderr
    code = ("import sys; sys.modules['transformers'] = None\n"
            "from siattn.cli import main\n"
            "sys.exit(main(['hf-train', '--steps', '1']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("siattn hf-train: error: ") and "transformers" in line and "pip install 'siattn[hf]'" in line
