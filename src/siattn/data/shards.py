"""Token shards on disk: writing ``.npy`` shards, reading them and modded-nanogpt ``.bin`` shards
memory-mapped, and :class:`TokenArray`, one 1-D view over a list of shards.

Shard formats
- ``{split}_{index:06d}.npy``: a standard NumPy file holding a 1-D little-endian uint16 (vocab <= 65536) or
  uint32 array, opened with ``np.load(mmap_mode="r")``; sizes and sha256 live in ``manifest.json``.
- modded-nanogpt ``.bin``: 256 little-endian int32 header words (magic 20240520, version 1, token count), then
  the tokens as uint16. Read in place, never re-tokenised.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from siattn.data.errors import DataError
from siattn.data.tokenizer import sha256_file

NANOGPT_MAGIC = 20240520
NANOGPT_VERSION = 1
NANOGPT_HEADER_BYTES = 256 * 4


class TokenArray:
    """A read-only 1-D token sequence made of memory-mapped shards; nothing is loaded until asked for.

    ``len(a)``, ``a.get(start, length)`` (a NumPy copy that may span shards), ``a[i]``, ``a[i:j]`` and
    ``a.iter_chunks(n)`` are all it offers, so callers cannot pull a whole corpus into RAM by accident.
    """

    def __init__(self, shards: Sequence[np.ndarray], names: Sequence[str] | None = None):
        self.shards = [s for s in shards]
        for s in self.shards:
            if s.ndim != 1:
                raise ValueError(f"token shards must be 1-D, got shape {s.shape}")
        self.names = list(names) if names is not None else [f"shard{i}" for i in range(len(self.shards))]
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards]).astype(np.int64)
        self.dtype = self.shards[0].dtype if self.shards else np.dtype("<u2")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def nbytes(self) -> int:
        return len(self) * self.dtype.itemsize

    def get(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` as a fresh array, read across shard boundaries."""
        start, length = int(start), int(length)
        if start < 0 or length < 0 or start + length > len(self):
            raise IndexError(f"tokens [{start}, {start + length}) are outside [0, {len(self)})")
        if length == 0:
            return np.empty(0, dtype=self.dtype)
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        lo = start - int(self.offsets[i])
        first = self.shards[i][lo:lo + length]
        if len(first) == length:
            return np.array(first)
        out = np.empty(length, dtype=self.dtype)
        filled = 0
        while filled < length:
            piece = self.shards[i][lo:lo + length - filled]
            out[filled:filled + len(piece)] = piece
            filled += len(piece)
            i, lo = i + 1, 0
        return out

    def __getitem__(self, idx: int | slice) -> Any:
        if isinstance(idx, slice):
            start, stop, step = idx.indices(len(self))
            if step != 1:
                raise IndexError("TokenArray slices must have step 1")
            return self.get(start, max(0, stop - start))
        idx = int(idx)
        if idx < 0:
            idx += len(self)
        return self.get(idx, 1)[0]

    def iter_chunks(self, chunk: int = 1 << 24) -> Iterator[np.ndarray]:
        """Consecutive read-only pieces of at most ``chunk`` tokens, never crossing a shard."""
        for s in self.shards:
            for lo in range(0, len(s), chunk):
                yield s[lo:lo + chunk]

    def __repr__(self) -> str:
        return f"TokenArray({len(self)} tokens, {len(self.shards)} shards, dtype={self.dtype})"


def as_token_array(tokens: TokenArray | np.ndarray | Sequence[int]) -> TokenArray:
    """Accept a TokenArray, a 1-D array or memmap, or a list of ints."""
    if isinstance(tokens, TokenArray):
        return tokens
    arr = tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens)
    return TokenArray([arr] if len(arr) else [])


class ShardWriter:
    """Append token arrays; writes ``{prefix}_{index:06d}.npy`` files of at most ``shard_tokens`` tokens."""

    def __init__(self, folder: Path, prefix: str, dtype: np.dtype, shard_tokens: int):
        if shard_tokens < 1:
            raise ValueError("shard_tokens must be positive")
        self.folder, self.prefix, self.dtype, self.shard_tokens = Path(folder), prefix, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._buf: list[np.ndarray] = []
        self._n = 0

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards) + self._n

    def add(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids).astype(self.dtype, copy=False)
        while len(ids):
            take = min(len(ids), self.shard_tokens - self._n)
            self._buf.append(ids[:take])
            self._n += take
            ids = ids[take:]
            if self._n == self.shard_tokens:
                self._flush()

    def _flush(self) -> None:
        if not self._n:
            return
        name = f"{self.prefix}_{len(self.shards):06d}.npy"
        path = self.folder / name
        np.save(path, np.concatenate(self._buf).astype(self.dtype, copy=False), allow_pickle=False)
        self.shards.append({"name": name, "tokens": self._n, "bytes": path.stat().st_size,
                            "sha256": sha256_file(path)})
        self._buf, self._n = [], 0

    def close(self) -> list[dict[str, Any]]:
        self._flush()
        return self.shards


def open_npy_shard(path: Path, *, tokens: int, nbytes: int, dtype: str | np.dtype,
                   sha256: str | None = None) -> np.ndarray:
    """Memory-map one ``.npy`` shard after checking it against its manifest entry (and its hash if given)."""
    if not path.is_file():
        raise DataError(f"{path}: shard listed in manifest.json is missing")
    size = path.stat().st_size
    if size != nbytes:
        raise DataError(f"{path}: {size} bytes on disk but manifest.json says {nbytes}: the shard is "
                        "truncated or was changed; prepare the dataset again (overwrite=True / --overwrite)")
    if sha256 is not None and sha256_file(path) != sha256:
        raise DataError(f"{path}: sha256 does not match manifest.json: the shard is corrupt; prepare again")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as err:
        raise DataError(f"{path}: not a readable .npy token shard ({err})") from err
    if arr.ndim != 1 or arr.dtype != np.dtype(dtype) or len(arr) != tokens:
        raise DataError(f"{path}: holds {arr.dtype} array of shape {arr.shape}, manifest.json says "
                        f"{np.dtype(dtype)} x {tokens}")
    return arr


def read_nanogpt_header(path: str | Path) -> int:
    """Validate a modded-nanogpt ``.bin`` shard's header and size; return its token count."""
    path = Path(path)
    size = path.stat().st_size
    if size < NANOGPT_HEADER_BYTES:
        raise DataError(f"{path}: {size} bytes is shorter than the 1024-byte modded-nanogpt header")
    header = np.fromfile(path, dtype="<i4", count=256)
    if header[0] != NANOGPT_MAGIC:
        raise DataError(f"{path}: bad magic {int(header[0])} (expected {NANOGPT_MAGIC}): not a "
                        "modded-nanogpt token shard")
    if header[1] != NANOGPT_VERSION:
        raise DataError(f"{path}: unsupported modded-nanogpt shard version {int(header[1])} (expected 1)")
    n = int(header[2])
    expected = NANOGPT_HEADER_BYTES + 2 * n
    if n < 0 or size != expected:
        raise DataError(f"{path}: header says {n} tokens ({expected} bytes) but the file has {size} bytes: "
                        "truncated or corrupt")
    return n


def open_nanogpt_shard(path: str | Path) -> np.ndarray:
    """Memory-map the uint16 tokens of a validated modded-nanogpt ``.bin`` shard."""
    n = read_nanogpt_header(path)
    if n == 0:
        return np.empty(0, dtype="<u2")
    return np.memmap(path, dtype="<u2", mode="r", offset=NANOGPT_HEADER_BYTES, shape=(n,))


def write_nanogpt_shard(path: str | Path, tokens: np.ndarray) -> None:
    """Write tokens in the modded-nanogpt ``.bin`` format (for tests and interchange)."""
    tokens = np.asarray(tokens)
    if len(tokens) and (tokens.min() < 0 or tokens.max() > 65535):
        raise ValueError("modded-nanogpt shards hold uint16 tokens")
    header = np.zeros(256, dtype="<i4")
    header[:3] = NANOGPT_MAGIC, NANOGPT_VERSION, len(tokens)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2").tobytes())


def split_of_bin(name: str) -> str:
    """modded-nanogpt names shards ``*_train_*.bin`` / ``*_val_*.bin``: a name with "val" is validation."""
    parts = Path(name).stem.lower().replace("-", "_").replace(".", "_").split("_")
    return "val" if any(p in ("val", "valid", "validation") for p in parts) else "train"
