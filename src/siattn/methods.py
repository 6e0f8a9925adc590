"""The method registry: every compared method is one declarative entry (rotary variant × logit transform).

Adding a method is one ``register_method(Method(...))`` call; the model, the recipes and the CLI look methods up by
name in :data:`METHODS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from siattn.backends.transforms import LogitTransform
from siattn.positional.rope import RotaryConfig, RotaryKind
from siattn.schedule import DEFAULT_TAU

MethodTransform = Literal["none", "logn", "scale-invariant", "alibi"]


@dataclass(frozen=True)
class Method:
    """A positional method: which rotary embedding q and k get (None: none) and which logit transform applies."""

    name: str
    rotary: RotaryKind | None
    transform: MethodTransform
    description: str
    # an inference-time extension of another method: it runs that method's checkpoints unchanged (identical at
    # and below the training length, different only beyond it), so it is evaluated on them, not trained
    extends: str | None = None

    @property
    def uses_logn(self) -> bool:
        """True when the model must hold a learned LogN scale per head."""
        return self.transform == "logn"

    def logit_transform(self, tau: float = DEFAULT_TAU) -> LogitTransform:
        """The backend-level transform (LogN is applied to q by :func:`siattn.attention` instead)."""
        if self.transform == "scale-invariant":
            return LogitTransform("scale-invariant", tau=tau)
        if self.transform == "alibi":
            return LogitTransform("alibi")
        return LogitTransform("none")

    def rotary_config(
        self, head_dim: int, train_length: int, *, theta: float = 10_000.0, p_rope_base: float = 1024.0,
        p_rope_fraction: float = 0.5,
    ) -> RotaryConfig | None:
        """The rotary configuration for a model of this ``head_dim`` trained at ``train_length`` (None: no rotary)."""
        if self.rotary is None:
            return None
        return RotaryConfig(kind=self.rotary, head_dim=head_dim, theta=theta, p_rope_base=p_rope_base,
                            p_rope_fraction=p_rope_fraction, train_length=train_length)


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to :data:`METHODS` (replacing one of the same name) and return it."""
    METHODS[method.name] = method
    return method


def evaluation_method(trained: str, override: str | None) -> str:
    """The method to evaluate a checkpoint trained with ``trained`` under: ``override`` when it is ``trained``
    itself or extends it (``rope-ntk`` and ``yarn`` on ``rope``, ``logn-ntk`` on ``logn-rope``), else an error."""
    if override is None or override == trained:
        return trained
    method = get_method(override)
    if method.extends != trained:
        allowed = sorted(m.name for m in METHODS.values() if m.extends == trained)
        raise ValueError(f"method {override!r} cannot evaluate a checkpoint trained with {trained!r}; "
                         f"accepted: {[trained, *allowed]}")
    return override


def get_method(method: str | Method) -> Method:
    """Look a method up by name; a ``Method`` passes through. Unknown names raise ValueError listing the names."""
    if isinstance(method, Method):
        return method
    try:
        return METHODS[method]
    except KeyError:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}") from None


for _m in (
    Method("rope", "rope", "none", "rotary embedding, θ = 10,000"),
    Method("p-rope", "p-rope", "none", "rotary on half the pairs with frequencies down to 1/base, the rest unrotated"),
    Method("nope", None, "none", "no positional encoding (causal mask only)"),
    Method("rope-ntk", "ntk", "none", "RoPE with dynamic NTK base scaling beyond the training length", "rope"),
    Method("yarn", "yarn", "none", "RoPE with YaRN interpolation and attention temperature beyond the training length",
           "rope"),
    Method("logn-rope", "rope", "logn", "RoPE + logits × s_h·log n (learned s_h)"),
    Method("logn-p-rope", "p-rope", "logn", "p-RoPE + logits × s_h·log n (learned s_h)"),
    Method("logn-ntk", "ntk", "logn", "dynamic NTK RoPE + logits × s_h·log n (learned s_h)", "logn-rope"),
    Method("alibi", None, "alibi", "linear distance bias −slope_h·t with geometric head slopes"),
    Method("si-p-rope", "p-rope", "scale-invariant", "p-RoPE + the scale-invariant transform (the proposed method)"),
    Method("si-rope", "rope", "scale-invariant", "RoPE + the scale-invariant transform (ablation)"),
    Method("si-nope", None, "scale-invariant", "no positional encoding + the scale-invariant transform (ablation)"),
):
    register_method(_m)
