"""lm-evaluation-harness: siattn's lm-eval model and lm-eval's stock ``hf`` model on a local task (no hub)."""

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
lm_eval = pytest.importorskip("lm_eval")
hf = pytest.importorskip("siattn.hf")
harness = pytest.importorskip("siattn.hf.harness")

from hf_models import VOCAB, tiny_llama  # noqa: E402

from siattn.training.validation import per_token_losses  # noqa: E402

CHARS = "abcdefghijklmnopqrstuvwxyz .,"
DOCS = [
    {"context": "the cat sat on", "continuation": " the mat."},
    {"context": "a quick brown fox jumps", "continuation": " over the lazy dog"},
    {"context": "scale invariant attention keeps", "continuation": " its entropy."},
]


def char_tokenizer():
    """A character-level transformers tokenizer built locally: ids 3.. for CHARS, 1 = eos, 0 = pad."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(CHARS)}}
    assert len(vocab) <= VOCAB
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def write_task(folder):
    """A loglikelihood task over DOCS in ``folder`` (a YAML and its jsonl data)."""
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (folder / "siattn_local.yaml").write_text(
        "task: siattn_local\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: loglikelihood\n"
        "doc_to_text: '{{context}}'\n"
        "doc_to_target: '{{continuation}}'\n"
        "metric_list:\n  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n"
    )


def run_task(lm, folder):
    """Per-document log-likelihoods of the local task through lm-eval's evaluator."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    write_task(folder)
    tasks = TaskManager(include_path=str(folder), include_defaults=False)
    results = simple_evaluate(model=lm, tasks=["siattn_local"], task_manager=tasks, log_samples=True,
                              bootstrap_iters=0)
    samples = sorted(results["samples"]["siattn_local"], key=lambda s: s["doc_id"])
    return [float(s["resps"][0][0][0]) for s in samples]


def siattn_loglikelihoods(model, tokenizer):
    """log p(continuation | context) from siattn's own loss (per_token_losses over the adapter)."""
    adapter = hf.CausalLMAdapter(model)
    out = []
    for doc in DOCS:
        context = tokenizer.encode(doc["context"], add_special_tokens=False)
        whole = tokenizer.encode(doc["context"] + doc["continuation"], add_special_tokens=False)
        ids = torch.tensor(whole)[None]
        with torch.no_grad():
            losses = per_token_losses(adapter, ids[:, :-1], ids[:, 1:])
        out.append(-float(losses[0, len(context) - 1:].double().sum()))
    return out


def test_converted_model_through_lm_eval_equals_siattn_loss(tmp_path):
    model = hf.convert(tiny_llama(), method="si-p-rope")
    tokenizer = char_tokenizer()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    expected = siattn_loglikelihoods(model, tokenizer)
    (tmp_path / "task").mkdir()
    ours = run_task(harness.SiattnLM(pretrained=str(tmp_path / "model")), tmp_path / "task")
    from lm_eval.models.huggingface import HFLM

    stock = run_task(HFLM(pretrained=str(tmp_path / "model"), device="cpu", attn_implementation="siattn",
                          batch_size=1, dtype="float32"), tmp_path / "task")
    assert all(x < 0 for x in expected)
    for got in (ours, stock):
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_unconverted_model_scores_the_same_through_siattn_and_the_stock_hf_model(tmp_path):
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = tiny_llama(), char_tokenizer()
    (tmp_path / "task").mkdir()
    ours = run_task(harness.SiattnLM(pretrained=model, tokenizer=tokenizer), tmp_path / "task")
    stock = run_task(HFLM(pretrained=model, tokenizer=tokenizer, device="cpu", batch_size=1), tmp_path / "task")
    assert ours == pytest.approx(stock, rel=1e-5, abs=1e-5)
    assert ours == pytest.approx(siattn_loglikelihoods(model, tokenizer), rel=1e-5, abs=1e-5)
    assert len(set(ours)) == len(DOCS)


def test_lm_eval_finds_the_siattn_model_by_name():
    from lm_eval.api.registry import get_model

    assert get_model("siattn") is harness.SiattnLM
