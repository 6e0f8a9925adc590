"""``siattn data``: prepare token datasets and describe them."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from siattn.data.config import InfoConfig, PrepareConfig
from siattn.recipes.arguments import Command

HELP = "Prepare a tokenized dataset (built-in Python corpus, files, HF datasets, .bin shards) or describe it."

SOURCES_HELP = """\
sources:
  stdlib              the interpreter's standard library *.py (no tests, no site-packages; ~12 MB on 3.11).
                      Built in, needs no download; the manifest lists every file with its sha256.
  python-all          every *.py of this Python installation, site-packages included (hundreds of MB;
                      depends on what is installed, all of it recorded in the manifest).
  PATH                a file, folder (recursive) or glob of .txt .md .rst .py (one document per file),
                      .jsonl (one per line, field --text-field), .parquet (one per row, column --text-field).
  hf:NAME[:CONFIG]    a Hugging Face dataset via datasets.load_dataset (needs the hub unless cached; a local
                      data folder works too); its 'train' split, column --text-field.
  DIR (save_to_disk)  a folder written by Dataset.save_to_disk (datasets.load_from_disk); also hf:DIR.
  DIR or GLOB of .bin modded-nanogpt token shards (header magic 20240520), copied without re-tokenising;
                      files named *val* form the validation split.

tokenizers:
  bytes               UTF-8 bytes + end-of-document id 256 (vocab_size 257). The default.
  bpe:N               byte-level BPE with vocab N (e.g. bpe:8192) trained on the training split; saved as
                      tokenizer.json in the dataset folder.
  hf:PATH             a local Hugging Face tokenizer.json or a folder holding one.
  (.bin shards default to GPT-2 ids, vocab 50257, eod 50256; give hf:PATH of their tokenizer to decode.)

Documents are split into train/validation by a stable hash of their contents (seeded), each document is
preceded by the end-of-document token, and shards are uint16 (uint32 past 65536 ids) .npy files that
training reads memory-mapped. Re-running with the same settings reuses the existing folder.
"""


def default_out_dir(source: str, tokenizer: str) -> Path:
    """``data_cache/<source>-<tokenizer>``, both reduced to safe file-name characters."""
    def clean(s: str) -> str:
        s = s[3:] if s.startswith("hf:") else s
        s = Path(s.rstrip("/*")).name or s
        return re.sub(r"[^A-Za-z0-9._]+", "-", s).strip("-") or "data"

    return Path("data_cache") / f"{clean(source)}-{clean(tokenizer)}"


def _print_summary(summary: dict, entropy: dict[str, float] | None = None) -> None:
    src = summary["source"]
    where = src.get("name") or src.get("kind")
    print(f"dataset     {summary['path']}")
    print(f"source      {where} ({src.get('n_files', '?')} files"
          f"{', python ' + src['python'] if 'python' in src else ''})")
    print(f"tokenizer   {summary['tokenizer']} (vocab_size {summary['vocab_size']}, eod {summary['eod_id']}, "
          f"{summary['dtype']})")
    for split, info in summary["splits"].items():
        nbytes = info.get("bytes")
        extra = f", {nbytes:,} bytes ({info['tokens'] / nbytes:.3f} tokens/byte)" if nbytes else ""
        ent = f", unigram entropy {entropy[split]:.4f} nats/token" if entropy and split in entropy else ""
        print(f"{split:<11} {info['tokens']:,} tokens, {info.get('documents', '?')} documents{extra}, "
              f"{info['shards']} shard(s){ent}")


def _print_notes(manifest: dict) -> None:
    """What a prepared dataset left out or changed: non-regular files skipped, text that was not UTF-8."""
    skipped = manifest.get("source", {}).get("skipped") or []
    if skipped:
        print(f"note: skipped {len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} that "
              f"{'is' if len(skipped) == 1 else 'are'} not a regular file (FIFO, socket, device): "
              f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}", file=sys.stderr)
    stats = manifest.get("stats", {})
    n = stats.get("decode_errors") or 0
    if n:
        files = stats.get("decode_error_files") or []
        print(f"note: {n} file{'' if n == 1 else 's'} (or JSONL line{'' if n == 1 else 's'}) not valid UTF-8; the "
              f"{manifest['tokenizer'].get('spec')} tokenizer read U+FFFD for the undecodable bytes (the bytes "
              f"tokenizer keeps every byte): {', '.join(files)}{' ...' if n > len(files) else ''}", file=sys.stderr)


def prepare_main(args: PrepareConfig, _: argparse.Namespace | None = None) -> int:
    """Prepare the dataset and print its summary."""
    from siattn.data import TokenDataset, prepare_dataset
    from siattn.errors import check_output_folder

    out = args.out or default_out_dir(args.source, args.tokenizer)
    check_output_folder("--out", out)
    t0 = time.perf_counter()
    manifest = prepare_dataset(args.source, out, tokenizer=args.tokenizer, val_fraction=args.val_fraction,
                               text_field=args.text_field, max_bytes=args.max_bytes, seed=args.seed,
                               progress=args.progress, overwrite=args.overwrite)
    ds = TokenDataset(manifest.parent)
    _print_notes(ds.manifest)
    _print_summary(ds.summary())
    print(f"manifest    {manifest} ({time.perf_counter() - t0:.1f} s)")
    return 0


def info_main(args: InfoConfig, _: argparse.Namespace | None = None) -> int:
    """Print the summary of a prepared dataset."""
    from siattn.data import TokenDataset, unigram_entropy

    ds = TokenDataset(Path(args.path), verify=args.verify)
    summary = ds.summary()
    entropy = {s: unigram_entropy(ds.split(s)) for s in ("train", "val") if len(ds.split(s))} \
        if args.entropy else None
    if args.json:
        print(json.dumps(summary | ({"unigram_entropy": entropy} if entropy else {}), indent=1))
    else:
        _print_summary(summary, entropy)
        if args.verify:
            print("verified    every shard's size and sha256 match manifest.json")
    return 0


SUBCOMMANDS: dict[str, Command] = {
    "prepare": Command("tokenize a source into memory-mapped shards + manifest.json", PrepareConfig, prepare_main,
                       epilog=SOURCES_HELP),
    "info": Command("print a prepared dataset's manifest summary", InfoConfig, info_main),
}
