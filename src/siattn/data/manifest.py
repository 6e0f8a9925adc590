"""``manifest.json``: what a prepared dataset holds and how it was made.

Top-level keys: ``format`` ("siattn-tokens"), ``version``, ``fingerprint`` (hash of the request and the
source contents: equal fingerprints mean the same dataset), ``request`` (the prepare_dataset arguments),
``source`` (kind, location, files with sizes and sha256), ``tokenizer`` (spec, type, vocab_size, eod_id, saved
file and its hash), ``vocab_size``, ``eod_id``, ``dtype``, ``split`` (how train/val were chosen), ``splits``
({"train", "val"}: documents, bytes, tokens and shards with name, tokens, bytes, sha256), ``seed``, ``order``,
``stats``, ``created_by``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from siattn.data.errors import DataError

MANIFEST = "manifest.json"
FORMAT = "siattn-tokens"
VERSION = 1
_REQUIRED = ("format", "version", "tokenizer", "vocab_size", "eod_id", "dtype", "splits")


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    path = Path(folder) / MANIFEST
    path.write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    return path


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """Parse and sanity-check ``folder/manifest.json`` (or the manifest file itself)."""
    path = Path(folder)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: no manifest; prepare the dataset with `siattn data prepare`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: corrupt manifest ({err}); prepare the dataset again") from err
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: corrupt manifest (not a JSON object)")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise DataError(f"{path}: manifest lacks {', '.join(missing)}; prepare the dataset again")
    if manifest["format"] != FORMAT:
        raise DataError(f"{path}: format {manifest['format']!r} is not {FORMAT!r}")
    if manifest["version"] > VERSION:
        raise DataError(f"{path}: manifest version {manifest['version']} is newer than this siattn reads "
                        f"({VERSION}); upgrade siattn")
    for split in ("train", "val"):
        entry = manifest["splits"].get(split)
        if not isinstance(entry, dict) or not isinstance(entry.get("shards"), list):
            raise DataError(f"{path}: manifest has no valid '{split}' split")
        for shard in entry["shards"]:
            if not isinstance(shard, dict) or not {"name", "tokens", "bytes", "sha256"} <= shard.keys():
                raise DataError(f"{path}: manifest has a malformed shard entry in '{split}': {shard!r}")
            if Path(shard["name"]).name != shard["name"]:
                raise DataError(f"{path}: shard name {shard['name']!r} must be a plain file name")
    return manifest
