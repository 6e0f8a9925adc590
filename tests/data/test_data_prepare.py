"""prepare_dataset + TokenDataset: sources, manifest, split, shards and the errors for damaged data."""

from __future__ import annotations

import itertools
import json
import os
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from siattn.data import DataError, TokenDataset, load_tokenizer, prepare_dataset, write_nanogpt_shard
from siattn.data.tokenizer import sha256_file


def doc(i: int) -> str:
    return f"# document {i}\n" + "".join(f"value_{i}_{j} = {i * j} + {j}\n" for j in range(i % 7 + 3))


def write_text_folder(root: Path, n: int = 40) -> list[str]:
    """n .txt/.md/.py files (one document each) in a nested folder; returns the documents."""
    docs = [doc(i) for i in range(n)]
    for i, text in enumerate(docs):
        sub = root / f"part{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:03d}{['.txt', '.md', '.py'][i % 3]}").write_text(text)
    return docs


def documents_of(ds: TokenDataset, split: str) -> list[str]:
    """Decode a split back into documents (each is preceded by the end-of-document token)."""
    ids = ds.split(split).get(0, len(ds.split(split)))
    assert len(ids) == 0 or ids[0] == ds.eod_id
    cuts = [*np.flatnonzero(ids == ds.eod_id).tolist(), len(ids)]
    return [ds.tokenizer.decode(ids[a + 1:b].tolist()) for a, b in itertools.pairwise(cuts)]


def prepare(source, out, **kw):
    kw.setdefault("progress", False)
    return prepare_dataset(str(source), out, **kw)


def test_local_folder_with_text_jsonl_and_parquet_is_read_in_full(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")

    src = tmp_path / "corpus"
    docs = write_text_folder(src, 12)
    rows = [{"body": f"jsonl row {i}\n", "id": i} for i in range(5)]
    (src / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.table({"body": [f"parquet row {i}\n" for i in range(4)]}), src / "table.parquet")
    (src / "notes.txt").write_text("")  # empty documents are skipped
    manifest = json.loads(prepare(src, tmp_path / "out", text_field="body", val_fraction=0.2).read_text())

    ds = TokenDataset(tmp_path / "out")
    got = documents_of(ds, "train") + documents_of(ds, "val")
    expected = docs + [r["body"] for r in rows] + [f"parquet row {i}\n" for i in range(4)]
    assert sorted(got) == sorted(expected)
    assert manifest["source"]["n_files"] == 12 + 3
    assert {f["path"] for f in manifest["source"]["files"]} >= {"rows.jsonl", "table.parquet", "notes.txt"}
    assert manifest["stats"]["documents"] == len(expected)
    assert manifest["splits"]["train"]["tokens"] + manifest["splits"]["val"]["tokens"] == \
        sum(len(d.encode()) + 1 for d in expected)


def test_jsonl_without_the_text_field_names_the_file_and_field(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"content": "x"}\n')
    with pytest.raises(DataError, match=r"rows\.jsonl:1: no field 'text'"):
        prepare(tmp_path / "rows.jsonl", tmp_path / "out")


def test_split_is_deterministic_disjoint_and_by_document(tmp_path):
    src = tmp_path / "corpus"
    docs = write_text_folder(src, 60)
    prepare(src, tmp_path / "a", val_fraction=0.2)
    prepare(src, tmp_path / "b", val_fraction=0.2)
    a, b = TokenDataset(tmp_path / "a"), TokenDataset(tmp_path / "b")
    train, val = documents_of(a, "train"), documents_of(a, "val")
    assert train == documents_of(b, "train") and val == documents_of(b, "val")
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(docs)
    assert 0.15 <= a.manifest["splits"]["val"]["bytes"] / sum(len(d) for d in docs) <= 0.3
    # within a split, documents keep source order (files sorted by path)
    order = sorted(range(60), key=lambda i: f"part{i % 3}/f{i:03d}")
    assert train == [docs[i] for i in order if docs[i] in set(train)]
    # a different seed draws a different split
    prepare(src, tmp_path / "c", val_fraction=0.2, seed=1)
    assert documents_of(TokenDataset(tmp_path / "c"), "val") != val


def test_identical_documents_land_in_the_same_split(tmp_path):
    src = tmp_path / "corpus"
    src.mkdir()
    for i in range(30):
        (src / f"{i:02d}.txt").write_text("same text\n" if i % 2 else doc(i))
    ds = TokenDataset(prepare(src, tmp_path / "out", val_fraction=0.3).parent)
    in_train = "same text\n" in documents_of(ds, "train")
    in_val = "same text\n" in documents_of(ds, "val")
    assert in_train != in_val


def test_hf_dataset_saved_to_disk_is_read_without_network(tmp_path):
    datasets = pytest.importorskip("datasets")
    texts = [doc(i) for i in range(20)]
    datasets.Dataset.from_dict({"text": texts, "n": list(range(20))}).save_to_disk(str(tmp_path / "saved"))
    for source in (tmp_path / "saved", f"hf:{tmp_path / 'saved'}"):
        out = tmp_path / ("out1" if isinstance(source, Path) else "out2")
        manifest = json.loads(prepare(source, out, val_fraction=0.2).read_text())
        assert manifest["source"]["kind"] == "hf" and manifest["source"]["num_rows"] == 20
        assert all(len(f["sha256"]) == 64 for f in manifest["source"]["files"])
        ds = TokenDataset(out)
        assert sorted(documents_of(ds, "train") + documents_of(ds, "val")) == sorted(texts)


def test_hf_load_dataset_reads_a_local_data_folder(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    data = tmp_path / "hub_like"
    data.mkdir()
    texts = [doc(i) for i in range(10)]
    (data / "train.jsonl").write_text("".join(json.dumps({"content": t}) + "\n" for t in texts))
    prepare(f"hf:{data}", tmp_path / "out", text_field="content", val_fraction=0.2)
    ds = TokenDataset(tmp_path / "out")
    assert sorted(documents_of(ds, "train") + documents_of(ds, "val")) == sorted(texts)


def test_bpe_is_trained_on_the_training_split_and_saved_with_the_dataset(tmp_path):
    src = tmp_path / "corpus"
    write_text_folder(src, 40)
    manifest = json.loads(prepare(src, tmp_path / "out", tokenizer="bpe:320", val_fraction=0.2).read_text())
    ds = TokenDataset(tmp_path / "out", verify=True)
    assert ds.vocab_size == 320 and manifest["tokenizer"]["file"] == "tokenizer.json"
    assert load_tokenizer(tmp_path / "out").vocab_size == 320
    assert documents_of(ds, "val")[0] in {doc(i) for i in range(40)}
    assert ds.train.dtype == np.uint16


def test_stdlib_source_records_every_file_with_its_sha256(tmp_path):
    manifest = json.loads(prepare("stdlib", tmp_path / "out", max_bytes=200_000).read_text())
    source = manifest["source"]
    root = Path(sysconfig.get_paths()["stdlib"])
    assert source["kind"] == "stdlib" and source["roots"] == [str(root)]
    paths = [f["path"] for f in source["files"]]
    assert paths == sorted(paths) and len(paths) > 100
    assert not any(p.startswith(("site-packages/", "test/")) for p in paths)
    first = source["files"][0]
    assert first["sha256"] == sha256_file(root / first["path"])
    assert 199_990 <= manifest["stats"]["bytes"] <= 200_000  # the last file is cut at a character
    ds = TokenDataset(tmp_path / "out")
    assert len(ds.train) + len(ds.val) == manifest["stats"]["bytes"] + manifest["stats"]["documents"]


def test_nanogpt_bin_shards_are_read_directly_and_split_by_file_name(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 50256, 5000)
    train[::100] = 50256
    val = rng.integers(0, 50256, 700)
    write_nanogpt_shard(tmp_path / "fineweb_train_000001.bin", train[:3000])
    write_nanogpt_shard(tmp_path / "fineweb_train_000002.bin", train[3000:])
    write_nanogpt_shard(tmp_path / "fineweb_val_000000.bin", val)

    direct = TokenDataset(tmp_path)
    assert (direct.vocab_size, direct.eod_id) == (50257, 50256)
    np.testing.assert_array_equal(direct.train.get(2990, 20), train[2990:3010])
    np.testing.assert_array_equal(direct.val.get(0, 700), val)

    manifest = json.loads(prepare(tmp_path, tmp_path / "prepared").read_text())
    ds = TokenDataset(tmp_path / "prepared")
    np.testing.assert_array_equal(ds.train.get(0, 5000), train)
    np.testing.assert_array_equal(ds.val.get(0, 700), val)
    assert manifest["source"]["kind"] == "nanogpt-bin" and manifest["splits"]["train"]["documents"] == 50


def test_nanogpt_bin_without_val_file_is_cut_at_a_document_boundary(tmp_path):
    tokens = np.arange(1000) % 50
    tokens[::25] = 50256
    write_nanogpt_shard(tmp_path / "data_000.bin", tokens)
    prepare(tmp_path / "data_000.bin", tmp_path / "out", val_fraction=0.1)
    ds = TokenDataset(tmp_path / "out")
    assert len(ds.train) + len(ds.val) == 1000
    assert ds.val.get(0, 1)[0] == 50256 and 890 <= len(ds.train) <= 900


def test_nanogpt_bin_with_bad_magic_or_truncated_body_is_refused(tmp_path):
    write_nanogpt_shard(tmp_path / "a_train.bin", np.arange(100))
    raw = bytearray((tmp_path / "a_train.bin").read_bytes())
    raw[0:4] = np.int32(12345).tobytes()
    (tmp_path / "b_train.bin").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"b_train\.bin: bad magic 12345"):
        TokenDataset(tmp_path / "b_train.bin")

    write_nanogpt_shard(tmp_path / "c_train.bin", np.arange(100))
    os.truncate(tmp_path / "c_train.bin", 1024 + 150)
    with pytest.raises(DataError, match=r"c_train\.bin: header says 100 tokens .* file has 1174 bytes"):
        TokenDataset(tmp_path / "c_train.bin")
    with pytest.raises(DataError, match=r"c_train\.bin"):
        prepare(tmp_path / "c_train.bin", tmp_path / "out")


def test_truncated_shard_after_prepare_is_a_clear_error(tmp_path):
    write_text_folder(tmp_path / "corpus", 20)
    manifest = prepare(tmp_path / "corpus", tmp_path / "out", val_fraction=0.2)
    shard = tmp_path / "out" / json.loads(manifest.read_text())["splits"]["train"]["shards"][0]["name"]
    os.truncate(shard, shard.stat().st_size - 10)
    with pytest.raises(DataError, match=r"train_000000\.npy: .* bytes on disk but manifest\.json says"):
        TokenDataset(tmp_path / "out")


def test_changed_shard_bytes_are_caught_by_verify(tmp_path):
    write_text_folder(tmp_path / "corpus", 20)
    prepare(tmp_path / "corpus", tmp_path / "out", val_fraction=0.2)
    shard = tmp_path / "out" / "train_000000.npy"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 1
    shard.write_bytes(bytes(raw))
    TokenDataset(tmp_path / "out")  # same size: only the hash can tell
    with pytest.raises(DataError, match=r"train_000000\.npy: sha256 does not match"):
        TokenDataset(tmp_path / "out", verify=True)


def test_corrupt_manifest_is_a_clear_error(tmp_path):
    write_text_folder(tmp_path / "corpus", 10)
    manifest = prepare(tmp_path / "corpus", tmp_path / "out", val_fraction=0.2)
    manifest.write_text(manifest.read_text()[:100])
    with pytest.raises(DataError, match=r"manifest\.json: corrupt manifest"):
        TokenDataset(tmp_path / "out")


def test_shards_span_files_and_keep_order(tmp_path):
    docs = write_text_folder(tmp_path / "corpus", 30)
    prepare(tmp_path / "corpus", tmp_path / "small", val_fraction=0.2, shard_tokens=100)
    prepare(tmp_path / "corpus", tmp_path / "big", val_fraction=0.2)
    small, big = TokenDataset(tmp_path / "small"), TokenDataset(tmp_path / "big")
    assert len(small.train.shards) > 5 and len(big.train.shards) == 1
    np.testing.assert_array_equal(small.train.get(0, len(small.train)), big.train.get(0, len(big.train)))
    np.testing.assert_array_equal(small.train.get(95, 10), big.train.get(95, 10))
    assert sorted(documents_of(small, "train") + documents_of(small, "val")) == sorted(docs)


def test_existing_dataset_is_reused_and_a_different_one_is_not_overwritten(tmp_path):
    write_text_folder(tmp_path / "corpus", 20)
    out = tmp_path / "out"
    first = prepare(tmp_path / "corpus", out, val_fraction=0.2)
    mtime = first.stat().st_mtime_ns
    assert prepare(tmp_path / "corpus", out, val_fraction=0.2) == first
    assert first.stat().st_mtime_ns == mtime
    with pytest.raises(DataError, match="holds a different dataset"):
        prepare(tmp_path / "corpus", out, val_fraction=0.3)
    prepare(tmp_path / "corpus", out, val_fraction=0.3, overwrite=True)
    assert TokenDataset(out).manifest["request"]["val_fraction"] == 0.3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "out"]  # no temporary folders left


def test_failed_prepare_leaves_nothing_behind(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(DataError, match=r"rows\.jsonl:2: not valid JSON"):
        prepare(tmp_path / "rows.jsonl", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]


def test_cli_prepare_and_info(tmp_path, capsys):
    from siattn.cli import main

    write_text_folder(tmp_path / "corpus", 20)
    out = tmp_path / "ds"
    assert main(["data", "prepare", str(tmp_path / "corpus"), "--out", str(out), "--no-progress",
                 "--val-fraction", "0.2"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "train" in printed and "tokens" in printed
    assert main(["data", "info", str(out), "--verify", "--json", "--entropy"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vocab_size"] == 257 and info["splits"]["train"]["tokens"] > 0
    assert 0 < info["unigram_entropy"]["train"] < np.log(257)
    os.truncate(out / "val_000000.npy", 100)
    assert main(["data", "info", str(out)]) == 2
    assert "val_000000.npy" in capsys.readouterr().err
