"""The one quality evaluator (``compress.evaluate``): streamed, cached and self references agree
with a direct computation, and the reference runs once per batch."""

from __future__ import annotations

import math

import pytest
import torch

from compress.evaluate import ParentLogits, evaluate, kl_from_logits, lm_loss
from compress.student import assemble_student


class Counted:
    """A model wrapper that counts its forward calls (a real model underneath)."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, ids):
        self.calls += 1
        return self.model(ids)


def test_evaluate_matches_direct_kl_and_loss(stories_parent, tiny_splits):
    parent = stories_parent.adapter.eval()
    layers = parent.num_layers
    student = assemble_student(parent, [["attention:parent", "ffn:noop"]] * layers).eval()
    tokens = tiny_splits.eval[:6]
    with torch.no_grad():
        p, s = parent(tokens), student(tokens)
        direct_kl = float(kl_from_logits(p, s).mean())
        direct_loss = float(
            torch.nn.functional.cross_entropy(
                s[:, :-1].reshape(-1, s.shape[-1]).float(), tokens[:, 1:].reshape(-1)
            )
        )
    counted = Counted(parent)
    streamed = evaluate(student, tokens, counted, batch_size=4)
    assert counted.calls == 2  # once per batch
    cached = evaluate(student, tokens, ParentLogits(parent, tokens, 4))
    for q in (streamed, cached):
        assert q.kl == pytest.approx(direct_kl, rel=1e-5)
        assert q.lm_loss == pytest.approx(direct_loss, rel=1e-5)
        assert q.perplexity == pytest.approx(math.exp(direct_loss), rel=1e-5)
        assert 0.0 <= q.top1 < 1.0 and q.tokens == tokens[:, 1:].numel()
    assert lm_loss(student, tokens, 4)["loss"] == pytest.approx(direct_loss, rel=1e-5)
    assert math.isnan(evaluate(student, tokens).kl)


def test_parent_against_itself_runs_once_with_kl_zero(stories_parent, tiny_splits):
    counted = Counted(stories_parent.adapter.eval())
    q = evaluate(counted, tiny_splits.eval[:6], counted, batch_size=4)
    assert counted.calls == 2 and q.kl == 0.0 and q.top1 == 1.0
    with pytest.raises(ValueError, match="other tokens"):
        evaluate(counted, tiny_splits.eval[:6], ParentLogits(counted, tiny_splits.eval[:2]))
