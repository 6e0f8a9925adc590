"""Where a result came from: the commit, the hardware and versions, and the dataset, recorded with every run.

Two runs of the same command on the same data can differ when the hardware differs, even between CPUs of one kind
(results/main-job): the CPU's identity (model, family, the vector kernels torch dispatches to) is part of the record.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def source_commit() -> str:
    """The commit the code ran at: ``SIATTN_COMMIT`` (set where the tree is a copy without .git), else git's
    HEAD, with "+dirty" when tracked files differ from it; "unknown" outside a checkout."""
    if os.environ.get("SIATTN_COMMIT"):
        return os.environ["SIATTN_COMMIT"]
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty else "")


def cpu_description() -> str:
    """The CPU's model name, with its family and model numbers where Linux's /proc/cpuinfo gives them and the
    vector instruction set of torch's CPU kernels, e.g. "AMD EPYC (family 26, model 2; torch kernels AVX512)"."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip():
                break  # the first processor's block is enough
            fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    details = [f"family {fields['cpu family']}, model {fields['model']}"] if "cpu family" in fields else []
    details.append(f"torch kernels {torch.backends.cpu.get_cpu_capability()}")
    return f"{name} ({'; '.join(details)})"


def hardware(device: torch.device) -> str:
    """The GPU (with the CUDA version) on CUDA; otherwise the CPU, its core count and torch's thread count."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({torch.version.cuda and 'CUDA ' + torch.version.cuda})"
    return f"CPU {cpu_description()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def versions() -> dict[str, str]:
    """Python's and the numerical libraries' versions (those that are installed)."""
    found = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__}
    for name in ("triton", "tokenizers", "siattn"):
        with contextlib.suppress(ImportError):
            found[name] = __import__(name).__version__
    return found


def environment(device: torch.device) -> dict[str, Any]:
    """Commit, hardware, versions and date of the process that made a result."""
    return {"commit": source_commit(), "hardware": hardware(device), "versions": versions(),
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def dataset_record(ds: Any) -> dict[str, Any]:
    """What identifies a dataset (a :class:`siattn.data.TokenDataset`): its fingerprint, the digest of its
    source, each shard's sha256 and the token counts; compare these before comparing two runs' losses. nanoGPT
    ``.bin`` shards carry no fingerprint or digests: those entries are None."""
    manifest = ds.manifest
    return {"path": str(ds.path), "fingerprint": manifest.get("fingerprint"),
            "source_digest": manifest["source"].get("digest"),
            "shards_sha256": {split: [s.get("sha256") for s in manifest["splits"][split]["shards"]]
                              for split in ("train", "val")},
            "train_tokens": len(ds.train), "val_tokens": len(ds.val)}
