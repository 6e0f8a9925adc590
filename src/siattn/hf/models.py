"""Transformers causal LMs behind the interface siattn's evaluations call (the one :class:`siattn.model.GPT` has),
and Hugging Face model folders as evaluation checkpoints.

    model = load_model("path/to/hf-folder", device="cpu")      # converted folders get attn_implementation="siattn"
    lm = CausalLMAdapter(model)                                 # lm(idx, targets, return_per_token_loss=True)
    ckpt = load_hf_for_eval("path/to/hf-folder", device="cpu") # a siattn.evaluation.Checkpoint

Importing :mod:`siattn.hf` registers :func:`load_hf_for_eval` with :mod:`siattn.evaluation.checkpoints`, so
``siattn eval`` and ``siattn needle`` accept a folder with a transformers ``config.json`` beside the siattn
checkpoints (they need ``--data``: a dataset prepared with the model's own tokenizer).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from siattn.evaluation.checkpoints import Checkpoint, is_hf_model_dir, register_checkpoint_loader
from siattn.hf.registration import DEFAULT_NAME, register
from siattn.model.gpt import next_token_loss


class CausalLMAdapter(nn.Module):
    """A transformers causal LM with :class:`siattn.model.GPT`'s calling convention.

    ``forward(idx (B, T), targets (B, T) | None, *, context_length, return_per_token_loss)`` returns (logits
    (B, T, vocab) float32, loss): the mean cross-entropy in nats/token over targets != -1, or with
    ``return_per_token_loss`` the (B, T) losses (0 where the target is -1) — the same formula as GPT's.
    ``lm_head`` is the wrapped model's output layer (assignable, as siattn's head slicing needs).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.hf_model = model

    @property
    def lm_head(self) -> nn.Module:  # type: ignore[override]
        return self.hf_model.get_output_embeddings()

    def __setattr__(self, name: str, value: Any) -> None:
        # nn.Module.__setattr__ would register a module value as a new child of the adapter, never reaching
        # the wrapped model, so ``adapter.lm_head = head`` is routed here
        if name == "lm_head":
            self.hf_model.set_output_embeddings(value)
        else:
            super().__setattr__(name, value)

    @property
    def config(self) -> Any:
        return self.hf_model.config

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, context_length: int | None = None,
                return_per_token_loss: bool = False, kv_cache: Any = None,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: (B, T) token ids -> (logits (B, T, vocab) float32, loss or None); ``context_length`` is unused
        (a transformers model adapts its rotary itself)."""
        if kv_cache is not None:
            raise ValueError("kv_cache is not supported by CausalLMAdapter: use generate()")
        logits = self.hf_model(input_ids=idx, use_cache=False).logits.float()
        if targets is None:
            return logits, None
        return logits, next_token_loss(logits, targets, per_token=return_per_token_loss)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
                 eod_id: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, T) -> (B, T + new) through transformers' ``generate`` with its KV cache: greedy at temperature 0,
        else sampling; stops at ``eod_id``. ``generator`` is not supported by transformers (seed torch instead)."""
        if generator is not None:
            raise ValueError("generator is not supported by CausalLMAdapter.generate: seed with torch.manual_seed")
        sample = temperature > 0
        kw: dict[str, Any] = {"do_sample": sample, "max_new_tokens": max_new_tokens,
                              "pad_token_id": eod_id if eod_id is not None else 0}
        if sample:
            kw.update(temperature=temperature, top_k=top_k or 0)
        else:
            kw.update(temperature=None, top_p=None, top_k=None)
        if eod_id is not None:
            kw["eos_token_id"] = eod_id
        mask = torch.ones_like(idx)
        return self.hf_model.generate(idx, attention_mask=mask, **kw)


def _config_json(path: str | Path) -> dict:
    return json.loads((Path(path).expanduser() / "config.json").read_text())


def is_converted(path: str | Path) -> bool:
    """Whether the folder's config.json was written by a model that :func:`siattn.hf.convert` converted."""
    return "siattn_method" in _config_json(path)


def load_model(path: str | Path, device: torch.device | str = "cpu", *, dtype: torch.dtype | None = None,
               attn_name: str = DEFAULT_NAME, **kwargs: Any) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained(path)`` in eval mode on ``device``, offline; a converted folder
    (``siattn_method`` in its config) is loaded with siattn's attention (registered here as ``attn_name``)."""
    from transformers import AutoModelForCausalLM

    if is_converted(path):
        kwargs.setdefault("attn_implementation", register(attn_name))
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(str(Path(path).expanduser()), local_files_only=True, **kwargs)
    return model.to(device).eval()


@dataclass(frozen=True)
class HFModelInfo:
    """What the evaluations read from a checkpoint's config, for a transformers model: the siattn method of a
    converted model (else ``hf:<model_type>``), the training length (``original_max_position_embeddings`` or
    ``max_position_embeddings``) and the vocabulary size."""

    method: str
    train_length: int
    vocab_size: int


def model_info(config: Any) -> HFModelInfo:
    """:class:`HFModelInfo` of a transformers config."""
    from siattn.hf.rope import rope_params

    params = rope_params(config) or {}
    length = (params.get("original_max_position_embeddings") or getattr(config, "original_max_position_embeddings",
                                                                        None) or config.max_position_embeddings)
    method = getattr(config, "siattn_method", None) or f"hf:{config.model_type}"
    return HFModelInfo(method=method, train_length=int(length), vocab_size=int(config.vocab_size))


def load_hf_for_eval(path: str | Path, device: torch.device | str = "cpu", *, label: str | None = None,
                     attn_backend: str | None = None, method: str | None = None) -> Checkpoint:
    """A Hugging Face model folder as a :class:`siattn.evaluation.Checkpoint` (the model behind
    :class:`CausalLMAdapter`). ``attn_backend`` and ``method`` are siattn GPT options: refused here."""
    if attn_backend not in (None, "auto"):
        raise ValueError(f"attn_backend={attn_backend!r} applies to siattn checkpoints only; a transformers model "
                         "picks its backend itself")
    if method is not None:
        raise ValueError(f"method={method!r} applies to siattn checkpoints only: convert the transformers model with "
                         "siattn.hf.convert and save it instead")
    device = torch.device(device)
    model = CausalLMAdapter(load_model(path, device))
    info = model_info(model.config)
    return Checkpoint(label=label or info.method, path=str(path), model=model, config=info, train_config=None,
                      step=0, device=device)


def _checkpoint_state(path: str | Path) -> dict[str, Any]:
    """``model_config`` (method, train_length, vocab_size) of a model folder, read from its config.json only."""
    config = _config_json(path)
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    length = (params.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")
              or config.get("max_position_embeddings"))
    method = config.get("siattn_method") or f"hf:{config.get('model_type', 'unknown')}"
    return {"model_config": {"method": method, "train_length": int(length),
                             "vocab_size": int(config.get("vocab_size", 0))}}


register_checkpoint_loader(is_hf_model_dir, load_hf_for_eval, _checkpoint_state)
