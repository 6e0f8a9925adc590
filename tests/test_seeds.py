"""Tests that draw random inputs print the seed on failure, so that a failure can be replayed."""

import shutil
import subprocess
import sys
from pathlib import Path


def test_a_failing_test_reports_its_torch_seed_and_the_seed_replays_it(tmp_path):
    shutil.copy(Path(__file__).parent / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_draw.py").write_text(
        "import torch\n"
        "def test_draw():\n"
        "    print('drawn', torch.rand(()).item())\n"
        "    assert False\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    seed_line = next(line for line in lines if line.startswith("torch seed "))
    seed = int(seed_line.split()[2])
    drawn = float(next(line for line in lines if line.startswith("drawn ")).split()[1])
    import torch

    torch.manual_seed(seed)
    assert torch.rand(()).item() == drawn
