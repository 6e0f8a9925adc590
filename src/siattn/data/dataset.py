"""``TokenDataset``: a prepared dataset folder (or a folder of modded-nanogpt ``.bin`` shards), opened
memory-mapped and checked against its manifest."""

from __future__ import annotations

import glob as _glob
from functools import cached_property
from pathlib import Path
from typing import Any

from siattn.data.errors import DataError
from siattn.data.manifest import MANIFEST, read_manifest
from siattn.data.shards import TokenArray, open_nanogpt_shard, open_npy_shard, split_of_bin
from siattn.data.tokenizer import GPT2_IDS, Tokenizer, load_tokenizer, sha256_file, tokenizer_from_manifest


class TokenDataset:
    """Train and validation tokens of a prepared dataset, memory-mapped.

    ``TokenDataset(path, verify=False, tokenizer=None)``:
    - ``path``: a folder written by ``prepare_dataset`` (or its ``manifest.json``), or a folder / glob of
      modded-nanogpt ``.bin`` shards (``*val*`` files are validation; ``tokenizer`` defaults to GPT-2 ids).
    - ``verify``: also check every shard's sha256 (reads all data once); sizes are always checked.

    Attributes: ``train`` and ``val`` (:class:`TokenArray`), ``vocab_size``, ``eod_id``, ``tokenizer``
    (loaded on first use), ``manifest`` (dict), ``path``.
    """

    def __init__(self, path: str | Path, *, verify: bool = False, tokenizer: str | None = None):
        path = Path(path).expanduser()
        if path.is_file() and path.name == MANIFEST:
            path = path.parent
        self.path = path
        if (path / MANIFEST).is_file() or (path.is_dir() and not list(path.glob("*.bin"))):
            self._open_prepared(verify)
        else:
            self._open_bins(tokenizer or GPT2_IDS)

    def _open_prepared(self, verify: bool) -> None:
        self.manifest = m = read_manifest(self.path)
        self.vocab_size = int(m["vocab_size"])
        self.eod_id = int(m["eod_id"])
        splits = {}
        for split in ("train", "val"):
            shards = m["splits"][split]["shards"]
            arrays = [open_npy_shard(self.path / s["name"], tokens=s["tokens"], nbytes=s["bytes"],
                                     dtype=m["dtype"], sha256=s["sha256"] if verify else None)
                      for s in shards]
            splits[split] = TokenArray(arrays, [s["name"] for s in shards])
        info = m["tokenizer"]
        if verify and info.get("file"):
            tok_path = self.path / info["file"]
            if not tok_path.is_file() or sha256_file(tok_path) != info["sha256"]:
                raise DataError(f"{tok_path}: missing, or sha256 does not match manifest.json")
        self.train, self.val = splits["train"], splits["val"]

    def _open_bins(self, tokenizer: str) -> None:
        path = self.path
        files = sorted(path.glob("*.bin")) if path.is_dir() else (
            [path] if path.is_file() else sorted(Path(p) for p in _glob.glob(str(path))))
        if not files:
            raise DataError(f"{path}: neither a prepared dataset (no {MANIFEST}) nor .bin token shards")
        groups: dict[str, list[Path]] = {"train": [], "val": []}
        for f in files:
            groups[split_of_bin(f.name)].append(f)
        arrays = {s: [open_nanogpt_shard(f) for f in fs] for s, fs in groups.items()}
        self.train = TokenArray(arrays["train"], [f.name for f in groups["train"]])
        self.val = TokenArray(arrays["val"], [f.name for f in groups["val"]])
        tok = load_tokenizer(tokenizer)
        self.__dict__["tokenizer"] = tok
        self.vocab_size, self.eod_id = tok.vocab_size, tok.eod_id
        self.manifest = {
            "format": "nanogpt-bin", "source": {"kind": "nanogpt-bin", "n_files": len(files),
                                                  "files": [f.name for f in files]},
            "tokenizer": {"spec": tok.spec}, "vocab_size": self.vocab_size, "eod_id": self.eod_id,
            "dtype": "uint16",
            "splits": {s: {"tokens": len(a), "shards": [{"name": f.name, "tokens": len(x)}
                                                          for f, x in zip(groups[s], arrays[s])]}
                       for s, a in (("train", self.train), ("val", self.val))},
        }

    @cached_property
    def tokenizer(self) -> Tokenizer:
        return tokenizer_from_manifest(self.manifest["tokenizer"], self.path)

    def split(self, name: str) -> TokenArray:
        """``"train"`` or ``"val"``."""
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        return self.train if name == "train" else self.val

    def summary(self) -> dict[str, Any]:
        """The short description that ``siattn data info`` prints."""
        m = self.manifest
        src = {k: v for k, v in m.get("source", {}).items() if k not in ("files", "roots")}
        return {"path": str(self.path), "source": src, "tokenizer": m["tokenizer"].get("spec"),
                "vocab_size": self.vocab_size, "eod_id": self.eod_id, "dtype": m["dtype"],
                "splits": {s: {k: v for k, v in m["splits"][s].items() if k != "shards"}
                           | {"shards": len(m["splits"][s]["shards"])} for s in ("train", "val")}}

    def __repr__(self) -> str:
        return (f"TokenDataset({str(self.path)!r}, train={len(self.train)}, val={len(self.val)}, "
                f"vocab_size={self.vocab_size})")
