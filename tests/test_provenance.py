"""siattn.provenance: the commit, hardware, versions and dataset digests recorded with a result."""

from __future__ import annotations

import torch

from siattn.provenance import cpu_description, dataset_record, environment, source_commit


def test_the_commit_comes_from_the_environment_where_there_is_no_git(monkeypatch):
    monkeypatch.setenv("SIATTN_COMMIT", "0123abc")
    assert source_commit() == "0123abc"
    assert environment(torch.device("cpu"))["commit"] == "0123abc"


def test_the_cpu_record_names_the_kernel_set_torch_dispatches_to():
    # two CPUs of one kind gave different losses (results/main-job): the record must tell them apart
    description = cpu_description()
    assert f"torch kernels {torch.backends.cpu.get_cpu_capability()}" in description
    hardware = environment(torch.device("cpu"))["hardware"]
    assert hardware.startswith(f"CPU {description}, ") and f"{torch.get_num_threads()} torch threads" in hardware


def test_the_dataset_record_holds_its_fingerprint_and_shard_digests(tmp_path):
    from siattn.data import TokenDataset, prepare_dataset

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 40)
    prepare_dataset(str(corpus), tmp_path / "ds", tokenizer="bytes", val_fraction=0.3, progress=False)
    ds = TokenDataset(tmp_path / "ds")
    record = dataset_record(ds)
    assert record["fingerprint"] == ds.manifest["fingerprint"] and len(record["fingerprint"]) == 64
    assert record["train_tokens"] == len(ds.train) > 0 and record["val_tokens"] == len(ds.val) > 0
    shards = ds.manifest["splits"]["train"]["shards"]
    assert record["shards_sha256"]["train"] == [s["sha256"] for s in shards] and all(record["shards_sha256"]["train"])
