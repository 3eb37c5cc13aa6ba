import torch

from compress.data import generated_calibration, text_calibration
from tests.conftest import TINYSTORIES


def test_text_splits_are_disjoint_by_document_and_seeded(stories_parent):
    tok = stories_parent.tokenizer
    a = text_calibration(tok, [TINYSTORIES], 64, 8192, 2048, seed=0)
    b = text_calibration(tok, [TINYSTORIES], 64, 8192, 2048, seed=0)
    c = text_calibration(tok, [TINYSTORIES], 64, 8192, 2048, seed=1)
    assert a.train.shape == (128, 64) and a.eval.shape == (32, 64)
    assert torch.equal(a.train, b.train) and torch.equal(a.eval, b.eval)
    assert not torch.equal(a.eval, c.eval)
    # no 16-token window of an eval document appears in train
    train_windows = {
        tuple(a.train.flatten()[i : i + 16].tolist()) for i in range(0, a.train.numel() - 16)
    }
    ev = a.eval.flatten()
    hits = sum(
        tuple(ev[i : i + 16].tolist()) in train_windows for i in range(0, ev.numel() - 16, 16)
    )
    assert hits == 0


def test_generated_data_is_seeded(stories_parent):
    a = generated_calibration(stories_parent.adapter, stories_parent.tokenizer, 32, 128, 64, seed=5)
    b = generated_calibration(stories_parent.adapter, stories_parent.tokenizer, 32, 128, 64, seed=5)
    assert a.train.shape == (4, 32) and a.eval.shape == (2, 32)
    assert torch.equal(a.train, b.train)
    assert (a.train[:, 0] == stories_parent.tokenizer.bos_token_id).all()
