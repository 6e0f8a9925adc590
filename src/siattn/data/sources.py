"""Where documents come from. A source lists its inputs (with sizes and sha256, for the manifest) and can be
iterated more than once, always yielding the same documents in the same order.

- ``stdlib``: every ``*.py`` of the interpreter's standard library (``sysconfig.get_paths()["stdlib"]``),
  sorted by path, without ``site-packages``/``dist-packages`` and without the test suites (directories named
  ``test``, ``tests``, ``idle_test``): about 12 MB on CPython 3.11, needs no download.
- ``python-all``: every ``*.py`` of the installation: the whole standard library (tests included) and every
  site-packages directory (hundreds of MB, depends on what is installed; the manifest lists it all).
- a local file, folder (searched recursively, hidden entries skipped) or glob of ``.txt .md .rst .py`` files
  (one document per file), ``.jsonl`` (one per line, field ``text_field``) and ``.parquet`` (one per row).
- Hugging Face datasets: ``hf:NAME[:CONFIG]`` (``datasets.load_dataset``; a local data folder or file works
  too), or a folder written by ``Dataset.save_to_disk`` (``datasets.load_from_disk``). The ``train`` split is
  used when there are several; the dataset's own train/validation split is not used (see prepare).
- modded-nanogpt ``.bin`` token shards (a folder or glob of them): tokens, not documents; see prepare.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import json
import os
import site
import stat
import sys
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from siattn.data.errors import DataError
from siattn.data.shards import read_nanogpt_header
from siattn.data.tokenizer import sha256_file
from siattn.io import json_sha256

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
DOC_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
_TEST_DIRS = frozenset({"test", "tests", "idle_test"})
_SITE_DIRS = frozenset({"site-packages", "dist-packages"})
MAX_LISTED_ERRORS = 5  # files named in the manifest and the prepare output for decoding errors


@dataclass
class FileEntry:
    root: int
    path: str  # relative to roots[root], POSIX separators
    bytes: int
    sha256: str


@dataclass
class FileSource:
    """Documents read from a sorted list of files under one or more roots."""

    kind: str  # "stdlib" | "python-all" | "files"
    roots: list[Path]
    rel_paths: list[tuple[int, str]]
    text_field: str = "text"
    extra: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # not regular files (FIFOs, sockets, devices): not read
    decode_errors: int = 0  # documents that were not valid UTF-8 (in text mode)
    decode_error_files: list[str] = field(default_factory=list)  # the first few of their files
    _entries: list[FileEntry] | None = None

    def entries(self) -> list[FileEntry]:
        """Every input file with its size and sha256 (hashed once)."""
        if self._entries is None:
            out = []
            for root, rel in self.rel_paths:
                path = self.roots[root] / rel
                try:
                    out.append(FileEntry(root, rel, path.stat().st_size, sha256_file(path)))
                except OSError as err:
                    raise DataError(f"{path}: cannot read source file ({err})") from err
            self._entries = out
        return self._entries

    @property
    def size_hint(self) -> int:
        return sum(e.bytes for e in self.entries())

    def describe(self) -> dict[str, Any]:
        entries = self.entries()
        digest = hashlib.sha256()
        for e in entries:
            digest.update(f"{e.root}\0{e.path}\0{e.sha256}\n".encode())
        files = [{"path": e.path, "bytes": e.bytes, "sha256": e.sha256} | ({"root": e.root} if e.root else {})
                 for e in entries]
        return {"kind": self.kind, "roots": [str(r) for r in self.roots], **self.extra,
                "n_files": len(entries), "bytes": sum(e.bytes for e in entries),
                "digest": digest.hexdigest(), "files": files} | ({"skipped": self.skipped} if self.skipped else {})

    def documents(self, *, raw: bool = False) -> Iterator[str | bytes]:
        """The documents in order. ``raw``: plain-text files come as their bytes, untouched (for the bytes
        tokenizer); otherwise as text, with invalid UTF-8 replaced by U+FFFD and counted in ``decode_errors``
        (the first files in ``decode_error_files``). JSONL and Parquet rows are always text."""
        self.decode_errors = 0
        self.decode_error_files = []
        for root, rel in self.rel_paths:
            path = self.roots[root] / rel
            suffix = path.suffix.lower()
            if suffix in JSONL_SUFFIXES:
                yield from _jsonl_documents(path, self.text_field, self._decode_error(rel))
            elif suffix in PARQUET_SUFFIXES:
                yield from _parquet_documents(path, self.text_field)
            else:
                data = path.read_bytes()
                if raw:
                    yield data
                    continue
                try:
                    yield data.decode("utf-8")
                except UnicodeDecodeError:
                    self._decode_error(rel)()
                    yield data.decode("utf-8", errors="replace")

    def _decode_error(self, rel: str) -> Callable[[], None]:
        def count() -> None:
            self.decode_errors += 1
            if len(self.decode_error_files) < MAX_LISTED_ERRORS and rel not in self.decode_error_files:
                self.decode_error_files.append(rel)
        return count


def _jsonl_documents(path: Path, text_field: str, on_decode_error: Callable[[], None]) -> Iterator[str]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                on_decode_error()
                line = raw.decode("utf-8", errors="replace")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: not valid JSON ({err})") from err
            if not isinstance(row, dict) or text_field not in row:
                keys = list(row) if isinstance(row, dict) else type(row).__name__
                raise DataError(f"{path}:{lineno}: no field {text_field!r} (has {keys}); pass --text-field")
            yield _as_text(row[text_field], f"{path}:{lineno}")


def _parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if text_field not in names:
        raise DataError(f"{path}: no column {text_field!r} (has {names}); pass --text-field")
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            yield _as_text(value, str(path))


def _as_text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: text field holds {type(value).__name__}, not a string")
    return value


def _is_regular(path: Path) -> bool:
    """A regular file (following symlinks): FIFOs, sockets and devices would block or never end when read."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def _walk_sorted(root: Path, *, suffixes: tuple[str, ...], skip_dirs: frozenset[str] = frozenset(),
                 skip_hidden: bool = True, skipped: list[str] | None = None) -> list[str]:
    """Matching regular files under ``root`` (relative POSIX paths, sorted); others are added to ``skipped``."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip_dirs and d != "__pycache__"
                       and not (skip_hidden and d.startswith("."))]
        for name in filenames:
            if name.lower().endswith(suffixes) and not (skip_hidden and name.startswith(".")):
                rel = Path(dirpath, name).relative_to(root).as_posix()
                if _is_regular(Path(dirpath, name)):
                    out.append(rel)
                elif skipped is not None:
                    skipped.append(rel)
    if skipped is not None:
        skipped.sort()
    return sorted(out)


def stdlib_source() -> FileSource:
    root = Path(sysconfig.get_paths()["stdlib"])
    rels = _walk_sorted(root, suffixes=(".py",), skip_dirs=_SITE_DIRS | _TEST_DIRS, skip_hidden=False)
    if not rels:
        raise DataError(f"no .py files under the standard library at {root}")
    return FileSource("stdlib", [root], [(0, r) for r in rels],
                      extra={"python": sys.version.split()[0], "implementation": sys.implementation.name,
                             "excluded": "site-packages, dist-packages, test/ tests/ idle_test/"})


def python_all_source() -> FileSource:
    paths = sysconfig.get_paths()
    candidates = [paths["stdlib"], paths["platstdlib"], paths["purelib"], paths["platlib"]]
    candidates += site.getsitepackages() if hasattr(site, "getsitepackages") else []
    roots: list[Path] = []
    for c in candidates:
        p = Path(c).resolve()
        if p.is_dir() and p not in roots:
            roots.append(p)
    seen: set[Path] = set()
    rels: list[tuple[int, str]] = []
    for i, root in enumerate(roots):
        for rel in _walk_sorted(root, suffixes=(".py",), skip_dirs=_SITE_DIRS, skip_hidden=False):
            real = (root / rel).resolve()
            if real not in seen:
                seen.add(real)
                rels.append((i, rel))
    return FileSource("python-all", roots, rels,
                      extra={"python": sys.version.split()[0], "implementation": sys.implementation.name})


def local_source(spec: str, text_field: str) -> FileSource:
    path = Path(spec).expanduser()
    if path.is_file():
        return FileSource("files", [path.parent.resolve()], [(0, path.name)], text_field)
    if path.is_dir():
        root = path.resolve()
        skipped: list[str] = []
        rels = _walk_sorted(root, suffixes=DOC_SUFFIXES, skipped=skipped)
        if not rels:
            raise DataError(f"{path}: no {' '.join(DOC_SUFFIXES)} files in this folder")
        return FileSource("files", [root], [(0, r) for r in rels], text_field, skipped=skipped)
    if path.exists() and not path.is_dir():
        raise DataError(f"source {spec!r} is not a regular file (a FIFO, socket or device cannot be read)")
    matches = sorted(Path(m).resolve() for m in _glob.glob(spec, recursive=True) if Path(m).is_file())
    if not matches:
        raise DataError(f"source {spec!r}: no such file, folder or glob match")
    root = Path(os.path.commonpath([str(m.parent) for m in matches]))
    return FileSource("files", [root], [(0, m.relative_to(root).as_posix()) for m in matches], text_field)


@dataclass
class HFSource:
    """A Hugging Face dataset: ``load_dataset(name, config)`` or ``load_from_disk(folder)``."""

    name: str
    config: str | None
    from_disk: bool
    text_field: str = "text"
    _ds: Any = None
    _split: str | None = None

    def dataset(self) -> Any:
        if self._ds is None:
            try:
                import datasets
            except ImportError:
                raise DataError("Hugging Face sources need `datasets` (pip install 'siattn[data]')") from None
            try:
                if self.from_disk:
                    ds = datasets.load_from_disk(self.name)
                else:
                    ds = datasets.load_dataset(self.name, self.config)
            except Exception as err:
                raise DataError(f"cannot load Hugging Face dataset {self.name!r}"
                                f"{f' (config {self.config!r})' if self.config else ''}: {err}") from err
            if isinstance(ds, datasets.DatasetDict):
                splits = sorted(ds)
                if "train" in ds:
                    self._split, ds = "train", ds["train"]
                else:
                    self._split = "+".join(splits)
                    ds = datasets.concatenate_datasets([ds[s] for s in splits])
            if self.text_field not in ds.column_names:
                raise DataError(f"dataset {self.name!r} has no column {self.text_field!r} (columns: "
                                f"{ds.column_names}); pass --text-field")
            self._ds = ds
        return self._ds

    @property
    def size_hint(self) -> int | None:
        return None

    def describe(self) -> dict[str, Any]:
        ds = self.dataset()
        files = []
        for f in ds.cache_files:
            p = Path(f["filename"])
            files.append({"path": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)})
        digest = json_sha256([ds._fingerprint, files])
        return {"kind": "hf", "name": self.name, "config": self.config, "from_disk": self.from_disk,
                "split": self._split, "num_rows": ds.num_rows, "fingerprint": ds._fingerprint,
                "n_files": len(files), "digest": digest, "files": files}

    def documents(self) -> Iterator[str]:
        ds = self.dataset().select_columns([self.text_field])
        for batch in ds.iter(batch_size=1024):
            for value in batch[self.text_field]:
                yield _as_text(value, f"dataset {self.name!r}")


@dataclass
class NanoGPTSource:
    """modded-nanogpt ``.bin`` token shards; tokens are copied, not re-tokenised."""

    paths: list[Path]
    counts: list[int]

    def describe(self) -> dict[str, Any]:
        files = [{"path": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p), "tokens": n}
                 for p, n in zip(self.paths, self.counts)]
        digest = json_sha256(files)
        return {"kind": "nanogpt-bin", "roots": sorted({str(p.parent) for p in self.paths}),
                "n_files": len(files), "tokens": sum(self.counts), "digest": digest, "files": files}


def nanogpt_source(paths: list[Path]) -> NanoGPTSource:
    paths = sorted(paths)
    return NanoGPTSource(paths, [read_nanogpt_header(p) for p in paths])


def _bin_files(spec: str) -> list[Path] | None:
    """The .bin shards a source spec names (folder holding only .bin data, a .bin file, a glob), else None."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path] if path.suffix == ".bin" else None
    if path.is_dir():
        bins = sorted(path.glob("*.bin"))
        docs = _walk_sorted(path, suffixes=DOC_SUFFIXES)
        return bins if bins and not docs else None
    if any(ch in spec for ch in "*?["):
        matches = [Path(m) for m in sorted(_glob.glob(spec, recursive=True))]
        if matches and all(m.suffix == ".bin" for m in matches):
            return matches
    return None


def is_save_to_disk_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def resolve_source(spec: str, *, text_field: str = "text") -> FileSource | HFSource | NanoGPTSource:
    """Turn a source spec into a source object (see the module docstring for the forms)."""
    if spec == "stdlib":
        return stdlib_source()
    if spec == "python-all":
        return python_all_source()
    if spec.startswith("hf:"):
        rest = spec[3:]
        if is_save_to_disk_folder(Path(rest).expanduser()):
            return HFSource(str(Path(rest).expanduser().resolve()), None, True, text_field)
        if Path(rest).expanduser().exists():
            return HFSource(str(Path(rest).expanduser().resolve()), None, False, text_field)
        name, _, config = rest.partition(":")
        return HFSource(name, config or None, False, text_field)
    if is_save_to_disk_folder(Path(spec).expanduser()):
        return HFSource(str(Path(spec).expanduser().resolve()), None, True, text_field)
    bins = _bin_files(spec)
    if bins:
        return nanogpt_source(bins)
    return local_source(spec, text_field)
