"""The options of ``siattn data``: :class:`PrepareConfig` (tokenize a source into shards) and
:class:`InfoConfig` (describe a prepared dataset)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from siattn.options import check_options, option


def parse_size(text: str) -> int:
    """'10M' -> 10_000_000 (K, M, G are powers of 1000; KiB, MiB, GiB of 1024)."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMG]i?)?B?\s*", text, flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 500000, 10M, 1GiB)")
    unit = (m.group(2) or "").upper()
    base = 1024 if unit.endswith("I") else 1000
    power = {"": 0, "K": 1, "M": 2, "G": 3}[unit[:1]]
    return int(float(m.group(1)) * base**power)


@dataclass(kw_only=True)
class PrepareConfig:
    """Tokenize a source into memory-mapped token shards and a manifest.json."""

    source: str = option("stdlib", "what to read (see sources below)", positional=True)
    tokenizer: str = option("bytes", "bytes | bpe:N | hf:PATH")
    out: str | None = option(None, "output folder (default: data_cache/SOURCE-TOKENIZER)")
    val_fraction: float = option(0.05, "share of bytes held out", min=0.0, max=1.0, max_open=True)
    text_field: str = option("text", "JSONL field / column with the text")
    max_bytes: int | None = option(None, "read at most this much text, e.g. 10M", parse=parse_size)
    seed: int = option(0, "salts the train/validation hash", min=0)
    overwrite: bool = option(False, "replace a different dataset in the output folder")
    progress: bool = option(True, "progress bars")

    def __post_init__(self) -> None:
        check_options(self)


@dataclass(kw_only=True)
class InfoConfig:
    """Print a prepared dataset's manifest summary (and check its shards)."""

    path: str = option(help="dataset folder (or a folder of .bin shards)", positional=True)
    verify: bool = option(False, "check every shard's sha256 too")
    entropy: bool = option(False, "also compute the unigram entropy of each split")
    json: bool = option(False, "print the summary as JSON")

    def __post_init__(self) -> None:
        check_options(self)
