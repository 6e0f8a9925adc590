"""Attention-statistics analysis: metrics on logits (``metrics``) and the IID-Gaussian theory (``theory``).

``metrics`` works on the logits of one query over its keys ordered by distance, so the same functions measure
synthetic logits (``siattn analyze theory``) and the rows of a trained model's causal score matrix.
"""

from siattn.analysis.metrics import (
    global_entropy,
    last_k_mass,
    logits_by_distance,
    range_entropy,
    range_mass,
    range_statistics,
    unnormalised_range_mass,
)

__all__ = [
    "global_entropy",
    "last_k_mass",
    "logits_by_distance",
    "range_entropy",
    "range_mass",
    "range_statistics",
    "unnormalised_range_mass",
]
