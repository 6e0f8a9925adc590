"""Fixtures shared by the training tests."""

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A small prepared text dataset (12 documents of 60 lines, 20% held out) for runs through the trainer."""
    from siattn.data import prepare_dataset

    src = tmp_path_factory.mktemp("corpus")
    for i in range(12):
        (src / f"f{i}.txt").write_text("".join(f"document {i}, line {j}: some text to learn\n" for j in range(60)))
    out = tmp_path_factory.mktemp("data") / "d"
    prepare_dataset(str(src), out, val_fraction=0.2, progress=False)
    return out
