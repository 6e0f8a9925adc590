"""Packed training (``TrainConfig.pack_documents``): each micro-batch runs as one row of documents split at the
end-of-document tokens; off by default, where the model never sees ``cu_seqlens``."""

from __future__ import annotations

import pytest
import torch

from siattn.data import pack_rows
from siattn.errors import UsageError
from siattn.model import GPT
from siattn.training import resolve_config


def test_pack_rows_splits_at_row_starts_and_end_of_document_tokens():
    eod = 9
    x = torch.tensor([[1, 2, eod, 3, 4], [eod, 5, 6, eod, 7]])
    y = x + 100
    px, py, cu = pack_rows(x, y, eod)
    assert px.shape == py.shape == (1, 10) and torch.equal(px[0], x.flatten()) and torch.equal(py[0], y.flatten())
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 2, 5, 8, 10]
    _, _, cu = pack_rows(torch.tensor([[1, 2, 3]]), torch.tensor([[2, 3, 4]]), eod)
    assert cu.tolist() == [0, 3]
    with pytest.raises(ValueError, match=r"x and y must be \(batch, seq_len\)"):
        pack_rows(x, y[:, :3], eod)


def test_pack_documents_must_be_a_bool():
    with pytest.raises(UsageError, match="pack_documents must be true or false, got 'yes'"):
        resolve_config("cpu-tiny", pack_documents="yes")


@pytest.mark.parametrize("pack", [False, True])
def test_trainer_packs_only_when_asked(tmp_path, dataset, monkeypatch, pack):
    from siattn.data import TokenDataset
    from siattn.training.trainer import train

    seen = []
    original = GPT.forward

    def recording(self, idx, targets=None, **kw):
        seen.append((idx.clone(), kw.get("cu_seqlens")))
        return original(self, idx, targets, **kw)

    monkeypatch.setattr(GPT, "forward", recording)
    config = resolve_config("cpu-tiny", data=str(dataset), seq_len=64, batch_size=2, n_layer=1, n_embd=32,
                            n_head=1, head_dim=32, eval_tokens=64, eval_multipliers=(1,), eval_every=100,
                            steps=2, out=str(tmp_path / "run"), attn_backend="chunked", pack_documents=pack)
    result = train(config, progress=False, log=lambda *_: None)
    assert all(torch.isfinite(torch.tensor(v)) for v in result.final_val.values())
    packed = [(idx, cu) for idx, cu in seen if cu is not None]
    if not pack:
        assert not packed and seen
        return
    eod = TokenDataset(dataset).eod_id
    assert len(packed) == 2  # one per step (one micro-batch each); validation stays unpacked
    for idx, cu in packed:
        assert idx.shape == (1, 128)
        starts = sorted({0, 64, *torch.nonzero(idx[0] == eod).flatten().tolist()})
        assert cu.tolist() == [*starts, 128]
