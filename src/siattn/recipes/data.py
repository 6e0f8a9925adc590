"""``siattn data``: prepare token datasets and describe them."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from siattn.recipes.argtypes import SEED, number

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


def _size(text: str) -> int:
    """'10M' -> 10_000_000 (K, M, G are powers of 1000; KiB, MiB, GiB of 1024)."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMG]i?)?B?\s*", text, flags=re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500000, 10M, 1GiB)")
    unit = (m.group(2) or "").upper()
    base = 1024 if unit.endswith("I") else 1000
    power = {"": 0, "K": 1, "M": 2, "G": 3}[unit[:1]]
    return int(float(m.group(1)) * base**power)


def default_out_dir(source: str, tokenizer: str) -> Path:
    """``data_cache/<source>-<tokenizer>``, both reduced to safe file-name characters."""
    def clean(s: str) -> str:
        s = s[3:] if s.startswith("hf:") else s
        s = Path(s.rstrip("/*")).name or s
        return re.sub(r"[^A-Za-z0-9._]+", "-", s).strip("-") or "data"

    return Path("data_cache") / f"{clean(source)}-{clean(tokenizer)}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    p = sub.add_parser("prepare", help="tokenize a source into memory-mapped shards + manifest.json",
                       description="Tokenize a source into memory-mapped token shards and a manifest.json.",
                       epilog=SOURCES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", nargs="?", default="stdlib",
                   help="what to read (see sources below; default: stdlib)")
    p.add_argument("--tokenizer", default="bytes", help="bytes | bpe:N | hf:PATH (default: bytes)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: data_cache/<source>-<tokenizer>)")
    p.add_argument("--val-fraction", type=number(min=0.0, max=1.0, max_open=True), default=0.05,
                   help="share of bytes held out (default: 0.05)")
    p.add_argument("--text-field", default="text", help="JSONL field / column with the text (default: text)")
    p.add_argument("--max-bytes", type=_size, default=None, help="read at most this much text, e.g. 10M")
    p.add_argument("--seed", type=SEED, default=0, help="salts the train/validation hash (default: 0)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a different dataset in the output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    q = sub.add_parser("info", help="print a prepared dataset's manifest summary",
                       description="Print a prepared dataset's manifest summary (and check its shards).")
    q.add_argument("path", type=Path, help="dataset folder (or a folder of .bin shards)")
    q.add_argument("--verify", action="store_true", help="check every shard's sha256 too")
    q.add_argument("--entropy", action="store_true", help="also compute the unigram entropy of each split")
    q.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(_data_parser=parser)


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


def main(args: argparse.Namespace) -> int:
    from siattn.data import TokenDataset, prepare_dataset, unigram_entropy
    from siattn.errors import check_output_folder

    if args.data_command is None:
        args._data_parser.print_help()
        return 0
    if args.data_command == "prepare":
        out = args.out or default_out_dir(args.source, args.tokenizer)
        check_output_folder("--out", out)
        t0 = time.perf_counter()
        manifest = prepare_dataset(args.source, out, tokenizer=args.tokenizer,
                                   val_fraction=args.val_fraction, text_field=args.text_field,
                                   max_bytes=args.max_bytes, seed=args.seed,
                                   progress=not args.no_progress, overwrite=args.overwrite)
        ds = TokenDataset(manifest.parent)
        _print_notes(ds.manifest)
        _print_summary(ds.summary())
        print(f"manifest    {manifest} ({time.perf_counter() - t0:.1f} s)")
        return 0
    ds = TokenDataset(args.path, verify=args.verify)
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
