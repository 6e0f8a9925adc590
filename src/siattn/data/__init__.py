"""Offline data pipeline: sources -> tokenizer -> memory-mapped token shards + manifest -> batches.

    from siattn.data import prepare_dataset, TokenDataset, SequenceLoader, validation_windows

    manifest = prepare_dataset("stdlib", "data_cache/stdlib-bytes")        # built-in corpus, no download
    ds = TokenDataset(manifest.parent)                                      # .train / .val memory-mapped
    loader = SequenceLoader(ds.train, seq_len=512, batch_size=16, seed=0)   # endless, resumable
    x, y = next(loader)                                                     # int64 (16, 512), y = x shifted
    for w in validation_windows(ds.val, seq_len=512, n_tokens=1 << 20):     # (1, 513) each
        ...
"""

from siattn.data.dataset import TokenDataset
from siattn.data.errors import DataError
from siattn.data.loader import SequenceLoader, pack_rows, unigram_entropy, validation_windows
from siattn.data.prepare import prepare_dataset
from siattn.data.shards import TokenArray, write_nanogpt_shard
from siattn.data.tokenizer import (
    BytesTokenizer,
    HFTokenizer,
    IdTokenizer,
    Tokenizer,
    load_tokenizer,
    train_bpe,
)

__all__ = [
    "BytesTokenizer",
    "DataError",
    "HFTokenizer",
    "IdTokenizer",
    "SequenceLoader",
    "TokenArray",
    "TokenDataset",
    "Tokenizer",
    "load_tokenizer",
    "pack_rows",
    "prepare_dataset",
    "train_bpe",
    "unigram_entropy",
    "validation_windows",
    "write_nanogpt_shard",
]
