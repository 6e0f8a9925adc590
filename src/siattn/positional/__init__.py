"""Positional encodings: rotary variants (RoPE, p-RoPE, dynamic NTK, YaRN), ALiBi slopes, LogN query scaling."""

from siattn.positional.alibi import alibi_slopes
from siattn.positional.logn import logn_init, logn_query_scale
from siattn.positional.rope import (
    ROTARY_KINDS,
    RotaryConfig,
    apply_rotary,
    ntk_theta,
    p_rope_inv_freq,
    rope_inv_freq,
    rotate_half,
    scaled_p_rope_base,
    yarn_inv_freq,
)

__all__ = [
    "ROTARY_KINDS",
    "RotaryConfig",
    "alibi_slopes",
    "apply_rotary",
    "logn_init",
    "logn_query_scale",
    "ntk_theta",
    "p_rope_inv_freq",
    "rope_inv_freq",
    "rotate_half",
    "scaled_p_rope_base",
    "yarn_inv_freq",
]
