"""``siattn hf-train``: continual pre-training of a transformers model through transformers' Trainer, with the
loss by length before and after, a model that loads back, and packed windows whose positions restart."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hf_models import tiny_llama  # noqa: E402

from siattn.hf.continual import PackedWindows, flatten_windows, restarting_positions, training_mode  # noqa: E402


def test_positions_restart_at_every_end_of_document_token():
    ids = torch.tensor([5, 6, 0, 7, 8, 9, 0, 0, 4])
    assert restarting_positions(ids, eod_id=0).tolist() == [0, 1, 0, 1, 2, 3, 0, 0, 1]


def test_windows_are_seeded_and_carry_restarting_positions():
    tokens = torch.arange(1, 200) % 17
    a = PackedWindows(tokens.numpy(), 32, 5, seed=3, eod_id=0)
    b = PackedWindows(tokens.numpy(), 32, 5, seed=3, eod_id=0)
    assert [a[i]["input_ids"].tolist() for i in range(5)] == [b[i]["input_ids"].tolist() for i in range(5)]
    item = a[0]
    assert torch.equal(item["labels"], item["input_ids"])
    assert torch.equal(item["position_ids"], restarting_positions(item["input_ids"], 0))


@pytest.mark.parametrize("method", ["si-p-rope", "rope"])
@pytest.mark.parametrize("eod", [0, None])
def test_a_flattened_micro_batch_trains_as_its_windows_one_by_one(method, eod):
    """flatten_windows packs B windows into one row: its loss and every gradient equal those of the windows run
    separately (token-weighted), for the converted model (siattn's cu_seqlens path) and for the kept RoPE
    (transformers' packed-sequence mask, made only without a KV cache: hf-train's training_mode); with
    end-of-document tokens inside the windows and without."""
    from siattn.hf import convert

    seed = 11
    print(f"seed={seed}")
    model = tiny_llama(seed).float()
    if method == "si-p-rope":
        model = convert(model, method="si-p-rope", p_rope_base=1000.0)
    tokens = (torch.randint(1, 100, (400,), generator=torch.Generator().manual_seed(seed))
              * (torch.rand(400, generator=torch.Generator().manual_seed(seed + 1)) > 0.05)).numpy()
    windows = PackedWindows(tokens, 24, 3, seed=seed, eod_id=eod)
    features = [windows[i] for i in range(3)]
    row = flatten_windows(features)
    assert row["input_ids"].shape == row["labels"].shape == row["position_ids"].shape == (1, 72)
    assert row["position_ids"][0, ::24].tolist() == [0, 0, 0]

    def loss_and_grads(batches):
        model.zero_grad()
        total, count = 0.0, 0
        for batch in batches:
            n = int((batch["labels"][:, 1:] != -100).sum())
            loss = model(**batch).loss * n
            loss.backward()
            total, count = total + loss.detach(), count + n
        grads = {name: p.grad / count for name, p in model.named_parameters() if p.grad is not None}
        return total / count, grads

    one_by_one = [{k: v[None] for k, v in f.items()} for f in features]
    with training_mode(model):  # as hf-train trains (the tiny model has no dropout)
        loss_sep, grads_sep = loss_and_grads(one_by_one)
        loss_flat, grads_flat = loss_and_grads([row])
    assert model.config.use_cache and not model.training
    torch.testing.assert_close(loss_flat, loss_sep, rtol=1e-5, atol=1e-6)
    assert grads_flat.keys() == grads_sep.keys()
    for name in grads_sep:
        torch.testing.assert_close(grads_flat[name], grads_sep[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    """A tiny random Llama saved with a byte-level tokenizer's vocabulary, and a dataset prepared with it."""
    from siattn.data import prepare_dataset

    root = tmp_path_factory.mktemp("continual")
    model = tiny_llama()
    model.resize_token_embeddings(257)
    model.config.vocab_size = 257
    model.save_pretrained(root / "model")
    src = root / "text"
    src.mkdir()
    for i in range(6):
        (src / f"doc{i}.txt").write_text("".join(f"line {j} of document {i}.\n" for j in range(300)))
    data = prepare_dataset(str(src), root / "data", tokenizer="bytes", progress=False).parent
    return root, data


@pytest.mark.parametrize("method", ["si-p-rope", "rope"])
def test_hf_train_reports_loss_by_length_and_saves_a_model_that_loads_back(model_and_data, method, capsys):
    from siattn.cli import main
    from siattn.hf.continual import loss_by_length
    from siattn.hf.models import load_model

    root, data = model_and_data
    out = root / f"run-{method}"
    code = main(["hf-train", "--model", str(root / "model"), "--data", str(data), "--method", method,
                 "--seq-len", "32", "--steps", "3", "--batch-size", "2", "--lr", "1e-3", "--warmup-steps", "0",
                 "--eval-multipliers", "1,4", "--eval-tokens", "256", "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    assert result["lengths"] == [32, 128] and set(result["before"]) == set(result["after"]) == {"32", "128"}
    assert result["after"]["32"] < result["before"]["32"]  # three steps at lr 1e-3 on repetitive text
    assert any("loss" in row for row in result["history"])
    reloaded = load_model(out / "model")
    assert (getattr(reloaded.config, "siattn_method", None) == "si-p-rope") == (method == "si-p-rope")
    from siattn.data import TokenDataset

    again = loss_by_length(reloaded, TokenDataset(data).val, [32], 256, progress=False)
    assert again["32"] == pytest.approx(result["after"]["32"], abs=1e-4)


def test_hf_train_runs_on_two_processes_through_torchrun(model_and_data):
    """Two CPU processes (gloo): the Trainer splits the global batch between them, and one result and one model
    are written."""
    import os
    import subprocess
    import sys

    root, data = model_and_data
    out = root / "run-two"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, ["src", os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "siattn",
           "hf-train", "--model", str(root / "model"), "--data", str(data), "--seq-len", "32", "--steps", "3",
           "--batch-size", "4", "--lr", "1e-3", "--warmup-steps", "0", "--eval-multipliers", "1", "--eval-tokens",
           "128", "--no-progress", "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["processes"] == 2
    assert result["after"]["32"] < result["before"]["32"]
    assert (out / "model" / "config.json").exists()


def test_hf_train_names_a_missing_model_in_one_line(model_and_data, tmp_path, capsys):
    from siattn.cli import main

    _, data = model_and_data
    missing = tmp_path / "no-such-model"
    code = main(["hf-train", "--model", str(missing), "--data", str(data), "--steps", "1", "--no-progress",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "model must be" in err and str(missing) in err
    assert not (tmp_path / "out").exists()
