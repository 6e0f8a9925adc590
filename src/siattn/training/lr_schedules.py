"""Learning-rate schedules as multipliers of each group's base lr, a function of the step alone (so resuming
needs nothing but the step).

- ``constant-cooldown`` (the paper's 162M runs): constant, then linear to 0 over the last ``cooldown_frac`` of
  the steps (1308 of 4578).
- ``cosine`` (the paper's 304M runs): half a cosine from 1 to 0.
- ``constant``: 1 throughout.
An optional linear warm-up (none by default) multiplies the first ``warmup_steps``.
"""

from __future__ import annotations

import math


def lr_multiplier(step: int, total_steps: int, *, schedule: str = "constant-cooldown", cooldown_frac: float = 0.0,
                  warmup_steps: int = 0) -> float:
    """The lr multiplier for optimiser step ``step`` (0-based) of ``total_steps``."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    progress = min(max(step, 0), total_steps) / total_steps
    if schedule == "constant-cooldown":
        cooldown = round(cooldown_frac * total_steps)
        left = total_steps - step
        mult = 1.0 if left > cooldown else max(left, 0) / max(cooldown, 1)
    elif schedule == "cosine":
        mult = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "constant":
        mult = 1.0
    else:
        raise ValueError(f"schedule must be constant-cooldown, cosine or constant, got {schedule!r}")
    if warmup_steps > 0 and step < warmup_steps:
        mult *= (step + 1) / warmup_steps
    return mult
