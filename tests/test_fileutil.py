"""siattn.fileutil.write_folder: a folder is replaced whole or not at all."""

import pytest

from siattn.fileutil import write_folder


def test_write_folder_replaces_the_old_folder_whole(tmp_path):
    target = tmp_path / "model"
    write_folder(target, lambda d: (d / "a.txt").write_text("old"))
    write_folder(target, lambda d: (d / "b.txt").write_text("new"))
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary or moved-aside folder left


def test_write_folder_failing_keeps_the_previous_folder_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model"
    write_folder(target, lambda d: (d / "a.txt").write_text("old"))

    def half_written(folder):
        (folder / "b.txt").write_text("partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_folder(target, half_written)
    assert (target / "a.txt").read_text() == "old" and not (target / "b.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
