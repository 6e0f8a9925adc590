"""``prepare_dataset``: source -> documents -> tokens -> memory-mapped shards + ``manifest.json``.

The pipeline, for document sources:
1. scan: read every document once (capped at ``max_bytes``), give each a stable score from the sha256 of
   ``seed`` and its contents, and choose the validation split: the documents of lowest score, as many as
   bring their bytes closest to ``val_fraction`` of the total. Identical documents share a score and a split.
2. (``bpe:N`` only) train a byte-level BPE on the training documents.
3. tokenize: each document becomes ``[eod] + encode(document)``; documents keep their source order
   (files sorted by path, rows in file order) within each split; tokens go to ``train_*.npy`` / ``val_*.npy``.
modded-nanogpt ``.bin`` shards are copied token for token: their ``*val*`` files are the validation split, or,
without such files, the stream is cut at the first end-of-document token after ``1 - val_fraction`` of it.

Everything is written into a temporary folder beside ``out_dir`` and renamed into place at the end.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from siattn.data.errors import DataError
from siattn.data.manifest import FORMAT, MANIFEST, VERSION, read_manifest, write_manifest
from siattn.data.shards import ShardWriter, TokenArray, open_nanogpt_shard, split_of_bin
from siattn.data.sources import FileSource, HFSource, NanoGPTSource, resolve_source
from siattn.data.tokenizer import (
    GPT2_IDS,
    HFTokenizer,
    Tokenizer,
    load_tokenizer,
    parse_bpe_spec,
    token_dtype,
    train_bpe,
)
from siattn.fileutil import remove_stale_temporaries
from siattn.io import json_sha256

DEFAULT_SHARD_TOKENS = 100_000_000
_BATCH_DOCS, _BATCH_BYTES = 1024, 8 << 20


def _version() -> str:
    from siattn import __version__

    return __version__


def split_score(doc: bytes, seed: int) -> float:
    """A document's stable position in [0, 1): depends only on ``seed`` and the document's bytes."""
    h = hashlib.sha256(f"siattn-split:{seed}:".encode() + doc).digest()
    return int.from_bytes(h[:8], "little") / 2.0**64


def _utf8(doc: str | bytes) -> bytes:
    return doc if isinstance(doc, bytes) else doc.encode("utf-8")


def _documents(src: FileSource | HFSource, max_bytes: int | None, raw: bool = False) -> Iterator[str | bytes]:
    """The source's non-empty documents, stopping (and cutting the last one) at ``max_bytes`` UTF-8 bytes.
    ``raw``: plain-text files come as their exact bytes (for the bytes tokenizer; see FileSource.documents)."""
    left = max_bytes
    docs = src.documents(raw=True) if raw and isinstance(src, FileSource) else src.documents()
    for doc in docs:
        if not doc:
            continue
        if left is not None:
            data = _utf8(doc)
            if len(data) >= left:
                doc = data[:left] if isinstance(doc, bytes) else data[:left].decode("utf-8", errors="ignore")
                if doc:
                    yield doc
                return
            left -= len(data)
        yield doc


def _choose_val(scores: np.ndarray, sizes: np.ndarray, val_fraction: float) -> np.ndarray:
    """Boolean mask of validation documents: the lowest scores, as many as bring their bytes closest to
    ``val_fraction`` of the total (at least one document)."""
    n = len(scores)
    if val_fraction == 0 or n == 0:
        return np.zeros(n, dtype=bool)
    if n < 2:
        raise DataError("the source has a single document: a train/validation split by document needs two")
    order = np.argsort(scores, kind="stable")
    cum = np.cumsum(sizes[order])
    target = val_fraction * cum[-1]
    i = int(np.searchsorted(cum, target, side="left"))  # the first i + 1 documents reach the target
    k = i if i > 0 and target - cum[i - 1] < cum[i] - target else i + 1  # the closer of i, i + 1 documents
    mask = scores <= scores[order[k - 1]]
    if mask.all():
        raise DataError(f"val_fraction={val_fraction} leaves no training documents ({n} documents); lower it")
    return mask


def _request(source: str, tokenizer: str, val_fraction: float, text_field: str, max_bytes: int | None,
             seed: int, shard_tokens: int) -> dict[str, Any]:
    return {"source": source, "tokenizer": tokenizer, "val_fraction": val_fraction, "text_field": text_field,
            "max_bytes": max_bytes, "seed": seed, "shard_tokens": shard_tokens}


def _fingerprint(request: dict[str, Any], source_digest: str, tokenizer_id: str) -> str:
    key = {k: v for k, v in request.items() if k != "source"}
    return json_sha256([VERSION, key, source_digest, tokenizer_id])


def _tokenizer_identity(spec: str) -> tuple[str, Tokenizer | None]:
    """(identity string for the fingerprint, the loaded tokenizer or None when it is trained later)."""
    if parse_bpe_spec(spec) is not None:
        return spec, None
    tok = load_tokenizer(spec)
    if isinstance(tok, HFTokenizer):
        return "hf:" + hashlib.sha256(tok.tokenizer.to_str().encode()).hexdigest(), tok
    return tok.spec, tok


def _existing(out_dir: Path, fingerprint: str, overwrite: bool) -> Path | None:
    """The manifest path if ``out_dir`` already holds this very dataset; raise if it holds another."""
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise DataError(f"{out_dir} exists and is not a folder")
    if overwrite:
        return None
    if not any(out_dir.iterdir()):
        return None
    if not (out_dir / MANIFEST).is_file():
        raise DataError(f"{out_dir} exists and is not a prepared dataset; choose another output folder or "
                        "pass overwrite=True (--overwrite) to replace it")
    try:
        manifest = read_manifest(out_dir)
    except DataError as err:
        raise DataError(f"{err}; pass overwrite=True (--overwrite) to prepare it again") from err
    if manifest.get("fingerprint") != fingerprint:
        raise DataError(f"{out_dir} holds a different dataset (source {manifest.get('request', {})}); choose "
                        "another output folder or pass overwrite=True (--overwrite) to replace it")
    from siattn.data.dataset import TokenDataset

    try:
        TokenDataset(out_dir)  # checks that every shard is present and whole
    except DataError as err:
        raise DataError(f"{err}; pass overwrite=True (--overwrite) to prepare it again") from err
    return out_dir / MANIFEST


def prepare_dataset(source: str, out_dir: str | Path, *, tokenizer: str = "bytes", val_fraction: float = 0.05,
                    text_field: str = "text", max_bytes: int | None = None, seed: int = 0,
                    progress: bool = True, overwrite: bool = False,
                    shard_tokens: int = DEFAULT_SHARD_TOKENS) -> Path:
    """Tokenize ``source`` into memory-mapped shards under ``out_dir``; return the manifest path.

    source: ``"stdlib"`` (built in, the default corpus), ``"python-all"``, a local file/folder/glob of
        .txt/.md/.rst/.py/.jsonl/.parquet, ``"hf:NAME[:CONFIG]"`` or a ``save_to_disk`` folder, or a
        folder/glob of modded-nanogpt ``.bin`` shards.
    tokenizer: ``"bytes"``, ``"bpe:N"`` (trained here on the training split) or ``"hf:PATH"``; for ``.bin``
        shards the default means GPT-2 ids (``"ids:50257:50256"``).
    val_fraction: share of the bytes (of the tokens, for ``.bin`` shards) held out, chosen by document.
    text_field: the JSONL field / Parquet or dataset column holding the text.
    max_bytes: read at most this many UTF-8 bytes of documents (for ``.bin``: 2 bytes per training token).
    seed: salts the split hash; recorded in the manifest.
    overwrite: replace a different dataset already in ``out_dir`` (the same dataset is simply reused).
    shard_tokens: tokens per shard file.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if max_bytes is not None and max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    source = str(source)
    out_dir = Path(out_dir).expanduser().resolve()
    t0 = time.perf_counter()
    src = resolve_source(source, text_field=text_field)
    described = src.describe()
    tok_spec = tokenizer
    if isinstance(src, NanoGPTSource) and tokenizer == "bytes":
        tok_spec = GPT2_IDS
    elif isinstance(src, NanoGPTSource) and parse_bpe_spec(tokenizer) is not None:
        raise DataError(".bin shards are already tokenised: a BPE cannot be trained on them; use the default "
                        "tokenizer or hf:PATH of the tokenizer that made them")
    tok_id, tok = _tokenizer_identity(tok_spec)
    request = _request(source, tokenizer, val_fraction, text_field, max_bytes, seed, shard_tokens)
    fingerprint = _fingerprint(request, described["digest"], tok_id)
    found = _existing(out_dir, fingerprint, overwrite)
    if found is not None:
        if progress:
            print(f"{out_dir}: already prepared (same source, tokenizer and settings); reusing it")
        return found

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir.parent, out_dir.name)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if isinstance(src, NanoGPTSource):
            body = _build_from_bins(src, tok, tmp, val_fraction, max_bytes, shard_tokens, progress)
        else:
            body = _build_from_documents(src, tok_spec, tok, tmp, val_fraction, max_bytes, seed, shard_tokens,
                                         progress)
        manifest = {"format": FORMAT, "version": VERSION, "created_by": f"siattn {_version()}",
                    "fingerprint": fingerprint, "request": request, "source": described, **body,
                    "seed": seed, "seconds": round(time.perf_counter() - t0, 2)}
        write_manifest(tmp, manifest)
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / MANIFEST


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _build_from_documents(src: FileSource | HFSource, tok_spec: str, tok: Tokenizer | None, tmp: Path,
                          val_fraction: float, max_bytes: int | None, seed: int, shard_tokens: int,
                          progress: bool) -> dict[str, Any]:
    # 1. scan: scores and sizes, then the split
    scores, sizes = [], []
    totals = [t for t in (src.size_hint, max_bytes) if t]
    bar = tqdm(total=min(totals) if totals else None, unit="B", unit_scale=True,
               desc="scan", disable=not progress)
    raw = tok_spec == "bytes"  # the bytes tokenizer keeps every byte of a file, valid UTF-8 or not
    for doc in _documents(src, max_bytes, raw):
        data = _utf8(doc)
        scores.append(split_score(data, seed))
        sizes.append(len(data))
        bar.update(len(data))
    bar.close()
    if not scores:
        raise DataError(f"source {src.describe()['kind']!r} yielded no documents")
    is_val = _choose_val(np.asarray(scores), np.asarray(sizes, dtype=np.int64), val_fraction)
    total_bytes = int(sum(sizes))

    # 2. tokenizer
    vocab = parse_bpe_spec(tok_spec)
    if vocab is not None:
        train_docs = (d for d, v in zip(_documents(src, max_bytes), is_val) if not v)
        # the trainer's own bars (pre-processing, merges) draw on stdout: only on a terminal
        tok = train_bpe(train_docs, vocab, progress=progress and sys.stdout.isatty(),
                        length=int((~is_val).sum()))
    assert tok is not None
    dtype = token_dtype(tok.vocab_size)
    eod = np.array([tok.eod_id], dtype=np.int64)

    # 3. tokenize
    writers = {"train": ShardWriter(tmp, "train", dtype, shard_tokens),
               "val": ShardWriter(tmp, "val", dtype, shard_tokens)}
    stats = {s: {"documents": 0, "bytes": 0} for s in writers}
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"tokenize ({tok.spec})",
               disable=not progress)
    batch: list[str | bytes] = []
    batch_split: list[str] = []
    batch_bytes = 0

    def flush() -> None:
        pieces: dict[str, list[np.ndarray]] = {"train": [], "val": []}
        for split, ids in zip(batch_split, tok.encode_batch(batch)):
            pieces[split] += [eod, ids]
        for split, parts in pieces.items():
            if parts:
                arr = np.concatenate(parts)
                if arr.max() >= tok.vocab_size or arr.min() < 0:
                    raise DataError(f"tokenizer {tok.spec!r} produced id {int(arr.max())} outside its "
                                    f"vocabulary of {tok.vocab_size}")
                writers[split].add(arr)
        bar.update(batch_bytes)

    for doc, v in zip(_documents(src, max_bytes, raw), is_val):
        split = "val" if v else "train"
        n = len(_utf8(doc))
        stats[split]["documents"] += 1
        stats[split]["bytes"] += n
        batch.append(doc)
        batch_split.append(split)
        batch_bytes += n
        if len(batch) >= _BATCH_DOCS or batch_bytes >= _BATCH_BYTES:
            flush()
            batch, batch_split, batch_bytes = [], [], 0
    if batch:
        flush()
    bar.close()
    splits = {s: {**stats[s], "tokens": w.tokens, "shards": w.close()} for s, w in writers.items()}
    return {
        "tokenizer": tok.save(tmp),
        "vocab_size": tok.vocab_size,
        "eod_id": tok.eod_id,
        "dtype": dtype.name,
        "split": {"method": "by document: lowest sha256(seed, contents) first, as many as bring the bytes "
                            "closest to val_fraction; identical documents share a split",
                  "val_fraction": val_fraction, "seed": seed},
        "order": "source order within each split (files sorted by path); each document is preceded by eod_id",
        "stats": {"documents": len(sizes), "bytes": total_bytes, "max_bytes": max_bytes,
                  "decode_errors": getattr(src, "decode_errors", 0),
                  "decode_error_files": list(getattr(src, "decode_error_files", []))},
        "splits": splits,
    }


def _find_eod(tokens: TokenArray, start: int, eod: int) -> int | None:
    pos = start
    while pos < len(tokens):
        chunk = tokens.get(pos, min(1 << 20, len(tokens) - pos))
        hits = np.flatnonzero(chunk == eod)
        if len(hits):
            return pos + int(hits[0])
        pos += len(chunk)
    return None


def _build_from_bins(src: NanoGPTSource, tok: Tokenizer | None, tmp: Path, val_fraction: float,
                     max_bytes: int | None, shard_tokens: int, progress: bool) -> dict[str, Any]:
    assert tok is not None
    if tok.vocab_size > 65536:
        raise DataError(f"tokenizer {tok.spec!r} has {tok.vocab_size} ids but .bin shards hold uint16")
    groups: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    for path in src.paths:
        groups[split_of_bin(path.name)].append(open_nanogpt_shard(path))
    cap = None if max_bytes is None else max_bytes // 2
    if groups["val"]:
        train, val = TokenArray(groups["train"]), TokenArray(groups["val"])
        ranges = {"train": (train, 0, len(train) if cap is None else min(cap, len(train))),
                  "val": (val, 0, len(val))}
        method = "the source's *val* shards"
    else:
        stream = TokenArray(groups["train"])
        end = len(stream) if cap is None else min(cap, len(stream))
        cut = end
        if val_fraction > 0:
            found = _find_eod(stream, int(end * (1 - val_fraction)), tok.eod_id)
            if found is None or found >= end:
                raise DataError(f"no end-of-document token {tok.eod_id} in the last {val_fraction:.0%} of "
                                "the shards: cannot split by document; pass the right tokenizer or "
                                "val_fraction=0")
            cut = found
        ranges = {"train": (stream, 0, cut), "val": (stream, cut, end)}
        method = "cut at the first end-of-document token after 1 - val_fraction of the tokens"
    splits: dict[str, Any] = {}
    total = sum(stop - start for _, start, stop in ranges.values())
    bar = tqdm(total=total, unit="tok", unit_scale=True, desc="copy", disable=not progress)
    for split, (arr, start, stop) in ranges.items():
        writer = ShardWriter(tmp, split, np.dtype("<u2"), shard_tokens)
        docs = 0
        for lo in range(start, stop, 1 << 24):
            chunk = arr.get(lo, min(1 << 24, stop - lo))
            if len(chunk) and int(chunk.max()) >= tok.vocab_size:
                raise DataError(f"token id {int(chunk.max())} in the .bin shards is outside the vocabulary "
                                f"of {tok.spec!r} ({tok.vocab_size}); pass the tokenizer that made them")
            docs += int(np.count_nonzero(chunk == tok.eod_id))
            writer.add(chunk)
            bar.update(len(chunk))
        splits[split] = {"documents": docs, "bytes": None, "tokens": writer.tokens, "shards": writer.close()}
    bar.close()
    return {
        "tokenizer": tok.save(tmp),
        "vocab_size": tok.vocab_size,
        "eod_id": tok.eod_id,
        "dtype": "uint16",
        "split": {"method": method, "val_fraction": val_fraction},
        "order": "the shards' order (sorted by file name), token for token",
        "stats": {"max_bytes": max_bytes},
        "splits": splits,
    }
