"""Tokenizers: bytes, a BPE trained on a small corpus, a local Hugging Face tokenizer."""

from __future__ import annotations

import pytest

from siattn.data import BytesTokenizer, DataError, HFTokenizer, load_tokenizer, train_bpe

SAMPLES = ["", "hello world", "def f(x):\n    return x ** 2  # ünïcödé ✓\n", "\t\n  \x00 日本語 🙂"]


def small_corpus() -> list[str]:
    words = ["import", "return", "self", "value", "lambda", "yield", "class", "print", "range", "dict"]
    return [f"def {a}_{b}(x, y):\n    {c} = x + y * {i}\n    return {c}  # {a} {b}\n"
            for i, (a, b, c) in enumerate((a, b, c) for a in words for b in words for c in words[:3])]


@pytest.mark.parametrize("text", SAMPLES)
def test_bytes_tokenizer_round_trips_any_text(text):
    tok = BytesTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_bytes_tokenizer_has_257_ids_with_eod_256():
    tok = load_tokenizer("bytes")
    assert (tok.vocab_size, tok.eod_id) == (257, 256)
    assert tok.decode([104, 105, 256, 106]) == "hi<|endoftext|>j"


def test_bpe_trained_on_small_corpus_has_requested_vocab_size_and_round_trips():
    tok = train_bpe(small_corpus(), 400)
    assert isinstance(tok, HFTokenizer)
    assert tok.vocab_size == 400
    assert tok.eod_id == 0
    for text in [*SAMPLES, *small_corpus()[:5]]:
        assert tok.decode(tok.encode(text)) == text
    # merges make it shorter than bytes on text like the corpus
    sample = small_corpus()[7]
    assert len(tok.encode(sample)) < len(sample.encode()) / 2


def test_hf_tokenizer_loads_from_tokenizer_json_file_and_folder(tmp_path):
    train_bpe(small_corpus(), 300).tokenizer.save(str(tmp_path / "tokenizer.json"))
    for spec in (f"hf:{tmp_path / 'tokenizer.json'}", f"hf:{tmp_path}", str(tmp_path)):
        tok = load_tokenizer(spec)
        assert (tok.vocab_size, tok.eod_id) == (300, 0)
        assert tok.decode(tok.encode("x = 1\n")) == "x = 1\n"


def test_hf_tokenizer_without_end_of_document_token_is_refused(tmp_path):
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(DataError, match="end-of-document"):
        load_tokenizer(f"hf:{tmp_path}")


def test_unknown_or_untrained_specs_explain_what_to_do(tmp_path):
    with pytest.raises(DataError, match="trained, not loaded"):
        load_tokenizer("bpe:8192")
    with pytest.raises(DataError, match="unknown tokenizer"):
        load_tokenizer("sentencepiece")
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(f"hf:{tmp_path / 'missing.json'}")


def test_ids_tokenizer_knows_its_vocabulary_but_refuses_text():
    tok = load_tokenizer("ids:50257:50256")
    assert (tok.vocab_size, tok.eod_id) == (50257, 50256)
    with pytest.raises(DataError, match="ids only"):
        tok.decode([1, 2])
