"""Small shared pieces for the evaluation tests: a byte-level corpus with lines, a tiny GPT, run folders of
it trained a few steps on a prepared dataset, and an "oracle" model that answers retrieval prompts by reading
them."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn as nn

from siattn.data import BytesTokenizer

WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda",
         "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega")


def corpus_text(n_lines: int, seed: int = 0) -> str:
    """Lines of 3-9 random words: text with a line start every ~40 bytes."""
    rng = np.random.default_rng(seed)
    return "".join(" ".join(rng.choice(WORDS, rng.integers(3, 10))) + ".\n" for _ in range(n_lines))


@pytest.fixture(scope="session")
def tokenizer() -> BytesTokenizer:
    return BytesTokenizer()


@pytest.fixture(scope="session")
def haystack(tokenizer) -> np.ndarray:
    """About 40 kB of byte tokens with lines and a few end-of-document tokens."""
    docs = [np.asarray(tokenizer.encode(corpus_text(100, seed)), dtype=np.uint16) for seed in range(10)]
    return np.concatenate([np.concatenate([[tokenizer.eod_id], d]) for d in docs]).astype(np.uint16)


def tiny_config(method: str = "si-p-rope", train_length: int = 32):
    from siattn.model import GPTConfig

    return GPTConfig(vocab_size=257, n_layer=1, n_head=2, n_embd=32, head_dim=16, train_length=train_length,
                     method=method)


def tiny_gpt(method: str = "si-p-rope", train_length: int = 32, seed: int = 0):
    """A random-init GPT with its zero-initialised head and output projections perturbed (non-trivial
    losses)."""
    from siattn.model import GPT

    torch.manual_seed(seed)
    model = GPT(tiny_config(method, train_length))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lm_head" in name or "c_proj" in name:
                p.normal_(0.0, 0.05)
    return model.eval()


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """A prepared byte-level dataset folder of line-structured documents (about 100 kB of validation text)."""
    from siattn.data import prepare_dataset

    root = tmp_path_factory.mktemp("eval-data")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(24):
        (corpus / f"doc{i:02d}.txt").write_text(corpus_text(150, seed=100 + i))
    prepare_dataset(str(corpus), root / "data", tokenizer="bytes", val_fraction=0.4, progress=False)
    return root / "data"


def train_checkpoint(folder, data, train_length: int, steps: int = 3):
    """A run folder with a tiny byte-level GPT trained ``steps`` steps at ``train_length`` on ``data``."""
    from siattn.data import SequenceLoader, TokenDataset
    from siattn.model import GPT
    from siattn.training import build_optimizer, resolve_config, save_run_checkpoint

    cfg = resolve_config("cpu-tiny", seq_len=train_length, batch_size=2, steps=steps, n_layer=1, n_embd=32,
                         head_dim=16, data=str(data), eval_tokens=1 << 13)
    torch.manual_seed(0)
    model = GPT(cfg.model)
    opt = build_optimizer(model, cfg)
    loader = SequenceLoader(TokenDataset(data).train, cfg.seq_len, cfg.batch_size)
    for _ in range(cfg.steps):
        x, y = next(loader)
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    save_run_checkpoint(folder, cfg.steps, model=model.eval(), config=cfg.model, train_config=cfg)
    return folder


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, dataset):
    """A run folder: trained 3 steps at 384 positions (room for three byte-level needles)."""
    return train_checkpoint(tmp_path_factory.mktemp("run-384"), dataset, 384)


@pytest.fixture(scope="session")
def short_checkpoint(tmp_path_factory, dataset):
    """A run folder: trained 3 steps at 64 positions (16× is 1024)."""
    return train_checkpoint(tmp_path_factory.mktemp("run-64"), dataset, 64)


@pytest.fixture
def make_gpt():
    """:func:`tiny_gpt`, as a fixture."""
    return tiny_gpt


@pytest.fixture
def oracle():
    """The :class:`OracleLM` class, as a fixture."""
    return OracleLM


class OracleLM(nn.Module):
    """A stand-in model whose ``generate`` answers needle and passkey prompts by reading them (a perfect
    retriever), optionally with a fixed corruption of the answer text."""

    def __init__(self, tokenizer, corrupt=None):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.tokenizer, self.corrupt = tokenizer, corrupt

    def forward(self, idx, targets, *, context_length=None, return_per_token_loss=False):
        """Uniform next-token probabilities: every target costs log(vocab) nats."""
        assert return_per_token_loss
        losses = torch.full(targets.shape, math.log(self.tokenizer.vocab_size)) * (targets != -1)
        return None, losses

    def generate(self, idx, max_new_tokens, *, temperature=1.0, eod_id=None, **_):
        assert temperature == 0.0  # greedy
        prompt = self.tokenizer.decode(idx[0].tolist())
        if "pass key" in prompt:
            text = " " + re.search(r"The pass key is (\d+)\.", prompt).group(1)
        else:
            found = re.findall(r"The special magic (.+?) number is (\d+)\.", prompt)
            text = ";".join(f"{c}={n}" for c, n in found)
        if self.corrupt is not None:
            text = self.corrupt(text)
        new = torch.tensor([self.tokenizer.encode(text + "\n")[:max_new_tokens]], dtype=idx.dtype)
        return torch.cat([idx, new], dim=1)
