"""Mixed precision shared by training and evaluation: which autocast dtype a ``--dtype`` choice means on a device."""

from __future__ import annotations

import contextlib

import torch

DTYPES = ("auto", "float32", "bfloat16")


def amp_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``dtype`` on ``device``: ``auto`` is bfloat16 on CUDA, none (float32) on CPU."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if dtype == "float32" or (dtype == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def autocast(device: torch.device, dtype: str = "auto") -> contextlib.AbstractContextManager:
    """``torch.autocast`` for :func:`amp_dtype`, or a no-op context when that is float32."""
    dt = amp_dtype(device, dtype)
    if dt is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dt)


def use_tf32(device: torch.device | str) -> None:
    """On CUDA, let float32 matmuls (cuBLAS, cuDNN, and FlexAttention's kernels, which follow the cuBLAS flag) use
    TF32 tensor cores; nothing on other devices. The flags are process-wide, so training and every evaluation of a
    checkpoint set them here, and a phase run in a fresh process gives what it gives after training in the same one
    (an IEEE float32 FlexAttention forward at 131,072 tokens is also several times slower)."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
