"""`siattn reproduce`: list a study, rebuild its table, and launch the runs still missing, one process each."""

import subprocess
from typing import ClassVar

from siattn.cli import main


def test_list_shows_every_run_and_what_is_done(tmp_path, capsys):
    assert main(["reproduce", "gpu-small", "--list", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| si-p-rope-s0 | si-p-rope | 0 | auto |" in out
    assert "| rope-s0 | rope | 0 | auto | rope-ntk yarn |" in out
    assert "| si-p-rope-s0-flex | si-p-rope | 0 | flex |" in out
    from siattn.evaluation.grid import STUDIES

    assert out.count("| to do |") == len(STUDIES["gpu-small"].runs)  # nothing is done in an empty folder
    assert "| done |" not in out


def test_table_without_runs(tmp_path, capsys):
    assert main(["reproduce", "cpu-tiny", "--table", "--out", str(tmp_path)]) == 0
    assert "no completed runs yet" in capsys.readouterr().out


class FakeProcess:
    launched: ClassVar[list[list[str]]] = []

    def __init__(self, cmd, stdout, stderr):
        FakeProcess.launched.append(cmd)
        stdout.write("trained\n")
        stdout.close()

    def poll(self):
        return 0

    def kill(self):
        raise AssertionError("a finished run is not killed")


def test_next_launches_the_missing_runs_in_order_one_process_each(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", FakeProcess)
    monkeypatch.setattr("time.sleep", lambda s: None)
    FakeProcess.launched.clear()
    code = main(["reproduce", "cpu-tiny", "--next", "2", "--parallel", "2", "--out", str(tmp_path / "out"),
                 "--scratch", str(tmp_path / "scratch")])
    assert code == 0
    runs = [cmd[cmd.index("--run") + 1] for cmd in FakeProcess.launched]
    assert runs == ["si-p-rope-s0", "rope-s0"]  # the study's order: seed 0 of the proposed method first
    assert all(cmd[cmd.index("--out") + 1] == str(tmp_path / "out") for cmd in FakeProcess.launched)
    assert (tmp_path / "scratch" / "cpu-tiny" / "rope-s0.log").read_text() == "trained\n"
    assert "si-p-rope-s0: exit 0" in capsys.readouterr().out
