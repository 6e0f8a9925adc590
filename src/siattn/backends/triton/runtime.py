"""Whether the Triton kernels can run here: the triton import, the kernels module (compiled, or interpreted on the
CPU when ``TRITON_INTERPRET=1`` was set before it was imported), the device's SM count and compute capability."""

from __future__ import annotations

import functools

import torch

try:  # the kernels need triton; the backend still registers without it and says why it cannot run
    import triton
    from triton.tools.tensor_descriptor import TensorDescriptor

    from siattn.backends.triton import kernels as _k

    _IMPORT_ERROR: str | None = None
except Exception as err:  # ImportError, or a triton that fails to initialise on this machine
    triton = None
    TensorDescriptor = None
    _k = None
    _IMPORT_ERROR = f"triton is not usable here ({type(err).__name__}: {err}); pip install 'siattn[triton]'"


def interpreted() -> bool:
    """True when the kernels were compiled for Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return _k is not None and type(_k.fwd_kernel).__name__ == "InterpretedFunction"


def _use_asm() -> bool:
    return not interpreted()


@functools.lru_cache(maxsize=8)
def _sm_count(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).multi_processor_count
    return 4


def capability(device: torch.device | str) -> tuple[int, int] | None:
    """Compute capability (major, minor) of a CUDA device the kernels run compiled on; None under the interpreter
    or off CUDA (the row of :data:`~siattn.backends.triton.configs.ARCH_DEFAULTS` to use)."""
    device = str(device)
    if interpreted() or not device.startswith("cuda"):
        return None
    return _capability(device)


@functools.lru_cache(maxsize=8)
def _capability(device: str) -> tuple[int, int]:
    return tuple(torch.cuda.get_device_capability(torch.device(device)))
