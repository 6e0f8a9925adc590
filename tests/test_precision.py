"""siattn.precision: the autocast dtype of a ``--dtype`` choice, and the float32 matmul precision on CUDA."""

from __future__ import annotations

import pytest
import torch

from siattn.precision import amp_dtype, use_tf32


@pytest.fixture
def tf32_off():
    """TF32 flags off for the test, restored after it (they are process-wide)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_amp_dtype():
    assert amp_dtype(torch.device("cpu")) is None
    assert amp_dtype(torch.device("cuda")) is torch.bfloat16
    assert amp_dtype(torch.device("cuda"), "float32") is None
    assert amp_dtype(torch.device("cpu"), "bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of"):
        amp_dtype(torch.device("cpu"), "fp16")


def test_use_tf32_on_cuda_only(tf32_off):
    use_tf32("cpu")
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    use_tf32(torch.device("cuda"))  # the flags can be set without a GPU
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    # what FlexAttention's float32 kernels read (torch._inductor.kernel.flex: 'tf32' unless this is 'ieee')
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
