"""A ``BlockModel`` (parent or student) as a model of EleutherAI's lm-evaluation-harness.

``BlockModelLM(model, tokenizer)`` implements lm-eval's ``LM`` interface, so
``lm_eval.simple_evaluate(model=BlockModelLM(...), tasks=[...])`` scores any student the project
assembles, with the parent's tokenizer. Conventions (the same for parent and student, so their
accuracies compare):

- every scored sequence starts with the prefix token (BOS, else EOS), then the context, then the
  continuation; whitespace at the end of a context moves to the continuation;
- sequences longer than ``max_length`` keep their last ``max_length`` tokens;
- requests are scored in batches of ``batch_size``, longest first, right-padded (the model is
  causal, so padding after a sequence does not change its logits);
- ``generate_until`` decodes greedily with the KV cache, stops at any ``until`` string, at EOS,
  or after ``max_gen_toks`` tokens (sampling arguments are ignored).

lm-eval is imported when this module is; import it lazily (``nas eval`` does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from compress.model import BlockModel
from compress.progress import track

Tokens = list[int]


class BlockModelLM(LM):
    """lm-eval's ``LM`` over a ``BlockModel`` and a HuggingFace tokenizer."""

    def __init__(
        self,
        model: BlockModel,
        tokenizer,
        max_length: int = 2048,
        batch_size: int = 8,
        max_gen_toks: int = 256,
        name: str = "model",
    ):
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.batch_size = max(1, int(batch_size))
        self.max_gen_toks = int(max_gen_toks)
        self.name = name
        prefix = tokenizer.bos_token_id
        self.prefix_token = prefix if prefix is not None else tokenizer.eos_token_id
        if self.prefix_token is None:
            raise ValueError("the tokenizer has neither a BOS nor an EOS token to start sequences")

    def encode(self, text: str) -> Tokens:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # --- lm-eval's interface ----------------------------------------------------------------
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [self._split(*request.args) for request in requests]
        return self.score(pairs, f"[eval] {self.name}: loglikelihood")

    def loglikelihood_rolling(self, requests) -> list[float]:
        windows, owner = [], []
        for index, request in enumerate(requests):
            tokens = self.encode(request.args[0])
            for window in get_rolling_token_windows(
                tokens, self.prefix_token, self.max_length, context_len=1
            ):
                windows.append(make_disjoint_window(window))
                owner.append(index)
        totals = [0.0] * len(requests)
        scores = self.score(windows, f"[eval] {self.name}: rolling loglikelihood")
        for index, (logprob, _) in zip(owner, scores, strict=True):
            totals[index] += logprob
        return totals

    @torch.no_grad()
    def generate_until(self, requests) -> list[str]:
        out = []
        for request in track(requests, f"[eval] {self.name}: generate"):
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            limit = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            ids = [self.prefix_token, *self.encode(context)]
            ids = ids[-max(1, self.max_length - limit) :]
            out.append(self._greedy(ids, until, limit))
        return out

    # --- scoring ----------------------------------------------------------------------------
    def _split(self, context: str, continuation: str) -> tuple[Tokens, Tokens]:
        """(context tokens with the prefix token, continuation tokens): the continuation is
        what the whole text has beyond the context's tokens, so a merge at the seam counts."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.encode(context + continuation)
        context_ids = self.encode(context)
        return [self.prefix_token, *context_ids], whole[len(context_ids) :]

    @torch.no_grad()
    def score(
        self, pairs: list[tuple[Tokens, Tokens]], description: str
    ) -> list[tuple[float, bool]]:
        """Log-probability (nats) of each continuation given its context, and whether greedy
        decoding would produce it. ``pairs``: (context ids, continuation ids), contexts not
        empty (``_split`` starts them with the prefix token)."""
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
        batches = [
            order[start : start + self.batch_size]
            for start in range(0, len(order), self.batch_size)
        ]
        for batch in track(batches, description):
            rows = []
            for i in batch:
                context, continuation = pairs[i]
                rows.append((context + continuation)[-(self.max_length + 1) :][:-1])
            width = max(len(r) for r in rows)
            ids = torch.zeros((len(rows), width), dtype=torch.long)
            for r, row in enumerate(rows):
                ids[r, : len(row)] = torch.tensor(row)
            hidden = self.model.hidden_states(ids)  # (B, width, hidden), after the final norm
            for r, i in enumerate(batch):
                continuation = pairs[i][1]
                n = len(continuation)
                if n == 0:
                    continue
                end = len(rows[r])
                # (n, vocab): the predictions of the continuation's tokens only
                picked = F.log_softmax(self.model.lm_head(hidden[r, end - n : end]).float(), -1)
                target = torch.tensor(continuation)
                logprob = float(picked.gather(1, target[:, None]).sum())
                greedy = bool((picked.argmax(-1) == target).all())
                results[i] = (logprob, greedy)
        return results

    def _greedy(self, ids: Tokens, until: list[str], limit: int) -> str:
        logits, past = self.model.forward_cached(torch.tensor([ids]))
        new: Tokens = []
        eos = self.tokenizer.eos_token_id
        text = ""
        for _ in range(limit):
            token = int(logits[0, -1].argmax())
            if token == eos:
                break
            new.append(token)
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            if any(stop in text for stop in until):
                break
            logits, past = self.model.forward_cached(torch.tensor([[token]]), past)
        for stop in until:
            text = text.split(stop)[0]
        return text
