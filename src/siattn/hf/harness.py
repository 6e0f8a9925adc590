"""lm-evaluation-harness models: siattn GPT checkpoints and transformers models scored by siattn's loss.

Registered names (importing this module registers them; ``python -m siattn.hf.harness`` is lm-eval's command line
with them registered and siattn's attention function available to ``--model hf``):

- ``siattn``: :class:`SiattnLM`. ``pretrained`` is a siattn checkpoint or run folder (its tokenizer comes from
  the dataset it was trained on, or ``tokenizer=`` a siattn tokenizer spec) or a Hugging Face model folder
  (its own tokenizer; converted folders load with siattn's attention). Log-likelihoods come from the model's
  forward with ``return_per_token_loss`` (:class:`siattn.model.GPT`, or :class:`siattn.hf.CausalLMAdapter`):
  the cross-entropy siattn's own evaluations compute.
- lm-eval's stock ``hf`` model runs converted folders too: ``--model hf --model_args
  pretrained=DIR,attn_implementation=siattn`` (this module has registered siattn's attention function).

    python -m siattn.hf.harness --model siattn --model_args pretrained=runs/cpu-tiny-si-p-rope --tasks lambada_openai
    python -m siattn.hf.harness --model hf --model_args pretrained=DIR,attn_implementation=siattn,max_length=16384 ...

``max_length`` (both models): the longest sequence scored; longer inputs are left-truncated. SiattnLM's default
is no truncation at all (a siattn model is meant to run past its training length); HFLM's default is the config's
``max_position_embeddings``, which keeps a long-context task inside the training window unless raised.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from siattn.evaluation.checkpoints import is_hf_model_dir, load_for_eval
from siattn.hf.models import CausalLMAdapter, load_model
from siattn.hf.registration import register


class _HFTokenizer:
    """A transformers tokenizer behind siattn's ``encode`` / ``decode`` / ``eod_id`` (no special tokens added)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.eod_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


def _as_tokenizer(tokenizer: Any) -> Any:
    if hasattr(tokenizer, "eod_id"):
        return tokenizer
    if isinstance(tokenizer, str):
        from siattn.data import load_tokenizer

        return load_tokenizer(tokenizer)
    return _HFTokenizer(tokenizer)


@register_model("siattn")
class SiattnLM(TemplateLM):
    """lm-eval's model interface over a siattn model: ``loglikelihood``, ``loglikelihood_rolling`` and greedy
    ``generate_until``, one sequence per forward.

    ``pretrained``: a path (see the module docstring) or a model with GPT's calling convention (a
    transformers ``PreTrainedModel`` is wrapped in :class:`CausalLMAdapter`); ``tokenizer``: a siattn tokenizer
    spec or object, or a transformers tokenizer (required with a model object); ``device``: "cpu", "cuda", ...;
    ``max_length``: left-truncation length (None: none)."""

    def __init__(self, pretrained: str | nn.Module, tokenizer: Any = None, device: str = "cpu",
                 max_length: int | None = None, batch_size: int | str = 1, **kwargs: Any) -> None:
        super().__init__()
        if kwargs:
            raise ValueError(f"unknown arguments for the siattn lm-eval model: {sorted(kwargs)}; accepted: "
                             "pretrained, tokenizer, device, max_length, batch_size")
        self._device = torch.device(device)
        if isinstance(pretrained, str | Path):
            model, tokenizer = self._load(str(pretrained), tokenizer)
        else:
            model = pretrained
            if tokenizer is None:
                raise ValueError("tokenizer is required when pretrained is a model object")
        from transformers import PreTrainedModel

        if isinstance(model, PreTrainedModel):
            model = CausalLMAdapter(model)
        self.model = model.eval()
        self.tok = _as_tokenizer(tokenizer)
        self.max_length = None if max_length is None else int(max_length)

    def _load(self, path: str, tokenizer: Any) -> tuple[nn.Module, Any]:
        if is_hf_model_dir(path):
            from transformers import AutoTokenizer

            model = CausalLMAdapter(load_model(path, self._device))
            return model, tokenizer or AutoTokenizer.from_pretrained(path, local_files_only=True)
        ckpt = load_for_eval(path, self._device)
        if tokenizer is None:
            from siattn.evaluation.checkpoints import open_validation_data

            tokenizer = open_validation_data(None, ckpt).tokenizer
        return ckpt.model, tokenizer

    # ------------------------------------------------------------------------------------- lm-eval interface
    @property
    def eot_token_id(self) -> int:
        return int(self.tok.eod_id)

    @property
    def device(self) -> torch.device:
        return self._device

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return list(self.tok.encode(string))

    def tok_decode(self, tokens: list[int], **kwargs: Any) -> str:
        return self.tok.decode(tokens)

    @torch.no_grad()
    def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """log p(continuation | context) in nats and whether greedy decoding gives the continuation."""
        ids = (context + continuation)
        if self.max_length is not None:
            ids = ids[-(self.max_length + 1):]
        idx = torch.tensor(ids[:-1], dtype=torch.long, device=self._device)[None]
        targets = torch.tensor(ids[1:], dtype=torch.long, device=self._device)[None]
        logits, losses = self.model(idx, targets, return_per_token_loss=True)
        n = len(continuation)
        greedy = bool((logits[0, -n:].argmax(-1) == targets[0, -n:]).all())
        return -float(losses[0, -n:].double().sum()), greedy

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any
                              ) -> list[tuple[float, bool]]:
        out = []
        for cache_key, context, continuation in requests:
            result = self._score(list(context), list(continuation))
            out.append(result)
            self.cache_hook.add_partial("loglikelihood", cache_key, result)
        return out

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        out = []
        for (text,) in (req.args for req in requests):
            tokens = self.tok_encode(text)
            window = self.max_length or len(tokens) + 1
            windows = map(make_disjoint_window, get_rolling_token_windows(
                token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=window, context_len=1))
            total = sum(self._score(list(ctx), list(cont))[0] for ctx, cont in windows)
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return out

    @torch.no_grad()
    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        out = []
        for context, gen_kwargs in (req.args for req in requests):
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.get("max_gen_toks", 256))
            ids = self.tok_encode(context)
            if self.max_length is not None:
                ids = ids[-self.max_length:]
            idx = torch.tensor(ids, dtype=torch.long, device=self._device)[None]
            new = self.model.generate(idx, max_new, temperature=0.0, eod_id=self.eot_token_id)[0, idx.shape[1]:]
            text = self.tok_decode(new.tolist())
            for stop in until:
                text = text.split(stop)[0]
            out.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return out


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with siattn's models and attention function registered."""
    from lm_eval.__main__ import cli_evaluate

    register()
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


register()  # lm-eval's stock "hf" model can then load converted folders with attn_implementation="siattn"

if __name__ == "__main__":
    main()
