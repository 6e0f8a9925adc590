"""siattn: scale-invariant attention for PyTorch.

    out = siattn.scale_invariant_attention(q, k, v, tau=10.0)          # (B, H, T, D)
    out = siattn.attention(q, k, v, method="si-p-rope")                 # any method in siattn.METHODS
    out = siattn.attention(q, k, v, method="si-p-rope", kernel=siattn.KernelOptions(deterministic=True))
"""

from siattn.backends import BACKENDS, KernelOptions, LogitTransform, backend_names
from siattn.functional import attention, scale_invariant_attention
from siattn.methods import METHODS, Method, get_method, register_method
from siattn.schedule import expected_exp_logit, expected_logit_exp_logit, schedule

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "METHODS",
    "KernelOptions",
    "LogitTransform",
    "Method",
    "__version__",
    "attention",
    "backend_names",
    "expected_exp_logit",
    "expected_logit_exp_logit",
    "get_method",
    "register_method",
    "scale_invariant_attention",
    "schedule",
]
