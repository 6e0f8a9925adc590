"""``siattn eval`` and ``siattn needle`` on a Hugging Face model folder (a converted tiny Llama, byte tokens)."""

import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("siattn.hf")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from siattn.cli import main  # noqa: E402
from siattn.evaluation import load_for_eval, loss_at_length  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A converted Llama over the 257 byte tokens, trained length 32, saved as a transformers folder."""
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                         intermediate_size=64, num_hidden_layers=1, vocab_size=257, max_position_embeddings=32,
                         bos_token_id=None, eos_token_id=256, pad_token_id=256)
    model = hf.convert(LlamaForCausalLM(config).eval(), method="si-p-rope")
    path = tmp_path_factory.mktemp("hf") / "model"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def byte_data(tmp_path_factory):
    from siattn.data import prepare_dataset

    root = tmp_path_factory.mktemp("hf-data")
    (root / "corpus").mkdir()
    for i in range(4):
        (root / "corpus" / f"doc{i}.txt").write_text("the quick brown fox jumps over the lazy dog.\n" * (60 + i))
    prepare_dataset(str(root / "corpus"), root / "data", tokenizer="bytes", val_fraction=0.5, progress=False)
    return root / "data"


def test_load_for_eval_reads_a_model_folder(model_dir, byte_data):
    from siattn.data import TokenDataset

    ckpt = load_for_eval(model_dir)
    assert (ckpt.method, ckpt.train_length, ckpt.config.vocab_size) == ("si-p-rope", 32, 257)
    assert ckpt.model.hf_model.config._attn_implementation == "siattn"
    res = loss_at_length(ckpt.model, TokenDataset(byte_data).val, 32, 128, progress=False)
    assert math.isfinite(res.loss) and res.loss > 0


def test_eval_command_accepts_a_model_folder(model_dir, byte_data, tmp_path):
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(model_dir), "--data", str(byte_data), "--out", str(out),
                 "--tokens", "256", "--multipliers", "1", "2", "--no-progress"]) == 0
    (entry,) = json.loads((out / "eval.json").read_text())["checkpoints"].values()
    assert entry["method"] == "si-p-rope" and entry["train_length"] == 32
    assert all(math.isfinite(r["loss"]) for r in entry["results"].values())


def test_needle_command_accepts_a_model_folder(model_dir, byte_data, tmp_path):
    out = tmp_path / "needle"
    assert main(["needle", "--checkpoint", str(model_dir), "--data", str(byte_data), "--out", str(out),
                 "--task", "passkey", "--tokenizer", "bytes", "--trials", "1", "--multipliers", "16",
                 "--no-finetune", "--no-progress"]) == 0
    (entry,) = json.loads((out / "passkey.json").read_text())["checkpoints"].values()
    assert entry["method"] == "si-p-rope" and "zero-shot" in entry["stages"]


def test_needle_attention_trials_refuse_a_model_folder_before_evaluating(model_dir, byte_data, tmp_path, capsys):
    """The attention measurement hooks siattn GPT layers: a model folder is refused before any trial runs."""
    out = tmp_path / "needle"
    assert main(["needle", "--checkpoint", str(model_dir), "--data", str(byte_data), "--out", str(out),
                 "--task", "passkey", "--tokenizer", "bytes", "--trials", "1", "--multipliers", "1",
                 "--no-finetune", "--attention-trials", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "attention_trials" in err and "siattn GPT checkpoint" in err
    assert not (out / "passkey.json").exists()
