"""The one exception type of the data pipeline."""

from __future__ import annotations


class DataError(ValueError):
    """A dataset, shard, manifest, source or tokenizer is missing, corrupt or inconsistent.

    The message names the file and what is wrong, and where possible what to do next.
    """
