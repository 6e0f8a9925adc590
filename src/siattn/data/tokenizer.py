"""Tokenizers: raw bytes, a byte-level BPE trained on the corpus, or a local Hugging Face tokenizer.

Every tokenizer has the same small surface::

    tok.encode(text) -> list[int]      # no special tokens added
    tok.decode(ids) -> str             # the end-of-document token decodes to "<|endoftext|>"
    tok.vocab_size                     # exact: largest id + 1 (padding it is the model's business)
    tok.eod_id                         # the end-of-document token that separates documents
    tok.spec                           # the string that names it ("bytes", "bpe:8192", "hf:/path", ...)

Specs understood by :func:`load_tokenizer`:

- ``bytes``: UTF-8 bytes 0..255 plus the end-of-document token 256 (vocab_size 257).
- ``bpe:N``: a byte-level BPE with vocab N, trained by ``prepare_dataset`` on the training split; load the
  trained one from the prepared dataset folder or its ``tokenizer.json``.
- ``hf:PATH``: a ``tokenizer.json`` file, or a folder holding one (or a slow tokenizer that ``transformers``
  can convert, loaded with ``local_files_only``); ``hf:NAME`` with no such path is fetched from the hub.
- ``ids:VOCAB[:EOD]``: ids without a text codec (pre-tokenised shards, e.g. GPT-2 ids ``ids:50257:50256``).
- a path: a prepared dataset folder (its manifest names the tokenizer) or a ``tokenizer.json``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from siattn.data.errors import DataError

EOD_TOKEN = "<|endoftext|>"
GPT2_IDS = "ids:50257:50256"
TOKENIZER_FILE = "tokenizer.json"
# End-of-document candidates for foreign tokenizers, most common first.
_EOD_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>", "<|im_end|>", "[SEP]")


@runtime_checkable
class Tokenizer(Protocol):
    spec: str
    vocab_size: int
    eod_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id: uint16 up to 65535 ids, uint32 beyond."""
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


def _ids_list(ids: Sequence[int] | np.ndarray | Any) -> list[int]:
    if hasattr(ids, "tolist"):  # numpy arrays and torch tensors
        ids = ids.tolist()
    return [int(i) for i in ids]


class BytesTokenizer:
    """UTF-8 bytes as tokens 0..255, and the end-of-document token 256."""

    spec = "bytes"
    vocab_size = 257
    eod_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str | bytes]) -> list[np.ndarray]:
        """Texts as UTF-8 bytes; ``bytes`` documents are taken as they are (every byte kept)."""
        return [np.frombuffer(t if isinstance(t, bytes) else t.encode("utf-8"), dtype=np.uint8) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        out, run = [], bytearray()
        for i in _ids_list(ids):
            if 0 <= i < 256:
                run.append(i)
                continue
            if i != self.eod_id:
                raise ValueError(f"token id {i} is outside the bytes vocabulary (0..256)")
            out.append(run.decode("utf-8", errors="replace"))
            out.append(EOD_TOKEN)
            run = bytearray()
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def save(self, folder: Path) -> dict[str, Any]:
        return {"spec": self.spec, "type": "bytes", "vocab_size": self.vocab_size, "eod_id": self.eod_id,
                "file": None, "sha256": None}

    def __repr__(self) -> str:
        return "BytesTokenizer(vocab_size=257, eod_id=256)"


class IdTokenizer:
    """Token ids with no text codec: for pre-tokenised shards whose tokenizer is not at hand."""

    def __init__(self, vocab_size: int, eod_id: int | None = None):
        self.vocab_size = int(vocab_size)
        self.eod_id = int(vocab_size - 1 if eod_id is None else eod_id)
        self.spec = f"ids:{self.vocab_size}:{self.eod_id}"

    def _no_codec(self, *_: Any) -> Any:
        raise DataError(f"tokenizer {self.spec!r} holds ids only and cannot encode or decode text; prepare "
                        "the data with tokenizer='hf:/path/to/tokenizer.json' (for GPT-2 ids: GPT-2's)")

    encode = decode = encode_batch = _no_codec

    def save(self, folder: Path) -> dict[str, Any]:
        return {"spec": self.spec, "type": "ids", "vocab_size": self.vocab_size, "eod_id": self.eod_id,
                "file": None, "sha256": None}

    def __repr__(self) -> str:
        return f"IdTokenizer(vocab_size={self.vocab_size}, eod_id={self.eod_id})"


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` (trained BPE or a local Hugging Face one) with an end-of-document id."""

    def __init__(self, tokenizer: Any, *, spec: str, eod_id: int | None = None, eod_token: str | None = None):
        self.tokenizer = tokenizer
        self.spec = spec
        if eod_id is None:
            eod_id = _find_eod(tokenizer, eod_token, spec)
        self.eod_id = int(eod_id)
        self.vocab_size = max(int(tokenizer.get_vocab_size(with_added_tokens=True)), self.eod_id + 1)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encs]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(_ids_list(ids), skip_special_tokens=False)

    def save(self, folder: Path) -> dict[str, Any]:
        path = Path(folder) / TOKENIZER_FILE
        self.tokenizer.save(str(path))
        return {"spec": self.spec, "type": "hf", "vocab_size": self.vocab_size, "eod_id": self.eod_id,
                "file": TOKENIZER_FILE, "sha256": sha256_file(path)}

    def __repr__(self) -> str:
        return f"HFTokenizer(spec={self.spec!r}, vocab_size={self.vocab_size}, eod_id={self.eod_id})"


def _find_eod(tokenizer: Any, eod_token: str | None, spec: str) -> int:
    names = (eod_token,) if eod_token else _EOD_CANDIDATES
    for name in names:
        tid = tokenizer.token_to_id(name)
        if tid is not None:
            return int(tid)
    raise DataError(f"tokenizer {spec!r} has no end-of-document token (looked for {', '.join(names)}); "
                    "add one to the tokenizer, or set eos_token in its tokenizer_config.json")


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def parse_bpe_spec(spec: str) -> int | None:
    """``"bpe:8192"`` -> 8192; anything else -> None."""
    if not spec.startswith("bpe:"):
        return None
    try:
        n = int(spec[4:])
    except ValueError:
        raise DataError(f"bad tokenizer spec {spec!r}: expected bpe:VOCAB_SIZE, e.g. bpe:8192") from None
    if n < 257 + 1:
        raise DataError(f"bad tokenizer spec {spec!r}: a byte-level BPE needs vocab size > 257 "
                        "(256 bytes + eod)")
    return n


def train_bpe(texts: Iterable[str], vocab_size: int, *, progress: bool = False, length: int | None = None
              ) -> HFTokenizer:
    """Train a byte-level BPE (GPT-2 style pre-tokenisation, no normaliser: decode(encode(s)) == s).

    Ids: 0 is ``<|endoftext|>``, 1..256 the byte alphabet, then the merges up to ``vocab_size``
    (fewer if the corpus runs out of pairs).
    """
    from tokenizers import Tokenizer as _Tok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = _Tok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOD_TOKEN], show_progress=progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer, length=length)
    return HFTokenizer(tok, spec=f"bpe:{vocab_size}", eod_id=tok.token_to_id(EOD_TOKEN))


def _load_hf(target: str, spec: str) -> HFTokenizer:
    from tokenizers import Tokenizer as _Tok

    path = Path(target).expanduser()
    eod_token = None
    if path.is_dir():
        cfg = path / "tokenizer_config.json"
        if cfg.is_file():
            eos = json.loads(cfg.read_text()).get("eos_token")
            eod_token = eos.get("content") if isinstance(eos, dict) else eos
        if (path / TOKENIZER_FILE).is_file():
            return HFTokenizer(_Tok.from_file(str(path / TOKENIZER_FILE)), spec=spec, eod_token=eod_token)
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise DataError(f"{path} has no {TOKENIZER_FILE}; converting a slow tokenizer needs "
                            "`transformers`") from None
        auto = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
        backend = getattr(auto, "backend_tokenizer", None)
        if backend is None:
            raise DataError(f"{path}: transformers could not build a fast tokenizer; save a tokenizer.json")
        return HFTokenizer(backend, spec=spec, eod_token=eod_token or auto.eos_token)
    if path.is_file():
        try:
            return HFTokenizer(_Tok.from_file(str(path)), spec=spec)
        except Exception as err:
            raise DataError(f"{path}: not a Hugging Face tokenizer.json ({err})") from err
    if target.startswith(("/", ".", "~")):
        raise DataError(f"tokenizer {spec!r}: {path} does not exist")
    return HFTokenizer(_Tok.from_pretrained(target), spec=spec)  # a hub name: needs the network


def tokenizer_from_manifest(info: dict[str, Any], folder: str | Path) -> Tokenizer:
    """Rebuild the tokenizer a manifest's ``tokenizer`` entry describes (files relative to ``folder``)."""
    kind = info.get("type")
    if kind == "bytes":
        return BytesTokenizer()
    if kind == "ids":
        return IdTokenizer(info["vocab_size"], info["eod_id"])
    if kind == "hf":
        from tokenizers import Tokenizer as _Tok

        path = Path(folder) / info["file"]
        if not path.is_file():
            raise DataError(f"{path}: tokenizer file named by the manifest is missing")
        return HFTokenizer(_Tok.from_file(str(path)), spec=info["spec"], eod_id=info["eod_id"])
    raise DataError(f"{folder}: manifest names an unknown tokenizer type {kind!r}")


def load_tokenizer(spec_or_path: str | Path) -> Tokenizer:
    """Build a tokenizer from a spec (``bytes``, ``hf:PATH``, ``ids:V[:EOD]``) or a path.

    A path may be a prepared dataset folder (its manifest names the tokenizer, e.g. a trained ``bpe:N``),
    a folder holding ``tokenizer.json``, or a ``tokenizer.json`` file.
    """
    spec = str(spec_or_path)
    if spec == "bytes":
        return BytesTokenizer()
    if spec.startswith("ids:"):
        parts = spec.split(":")
        try:
            return IdTokenizer(int(parts[1]), int(parts[2]) if len(parts) > 2 else None)
        except (ValueError, IndexError):
            raise DataError(f"bad tokenizer spec {spec!r}: expected ids:VOCAB[:EOD]") from None
    if spec.startswith("hf:"):
        return _load_hf(spec[3:], spec)
    if spec.startswith("bpe:"):
        parse_bpe_spec(spec)
        raise DataError(f"{spec!r} is trained, not loaded: run prepare_dataset(..., tokenizer={spec!r}) "
                        "(or `siattn data prepare --tokenizer {spec}`) and load the prepared dataset folder")
    path = Path(spec).expanduser()
    if (path / "manifest.json").is_file():
        from siattn.data.manifest import read_manifest

        return tokenizer_from_manifest(read_manifest(path)["tokenizer"], path)
    if path.exists():
        return _load_hf(str(path), f"hf:{path}")
    raise DataError(f"unknown tokenizer {spec!r}: use bytes, bpe:N, hf:PATH, ids:VOCAB[:EOD] or a prepared "
                    "dataset folder")
