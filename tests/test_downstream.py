"""`nas eval`: lm-eval accuracies of a job's parent and students on the shipped local task,
stored per point and joined onto the front by `nas pareto`."""

import json

import pytest
import torch

from nas import api
from nas.downstream import EvalError, local_tasks
from nas.errors import JobError
from tests.test_export import CHOICES, _job, nas

pytest.importorskip("lm_eval")

PARENT_CHOICES = [["attention:parent", "ffn:parent"]] * len(CHOICES)
LIMIT = 60  # items of nas_next_word (of 265): enough to tell models apart, fast on stories260K


@pytest.fixture(scope="module")
def evaluated(stories_parent, tmp_path_factory):
    """A hand-built job whose front has a real student (p0) and a student that keeps every
    parent block (pp), both evaluated with the parent on the local task."""
    store = _job(tmp_path_factory.mktemp("results"), stories_parent)
    points = json.loads(store.front.read_text())
    same = dict(points[0], point_id="pp", choices=PARENT_CHOICES, predicted_kl=0.0)
    points = [dict(p, params=1.0, memory_mib=1.0) for p in (*points, same)]
    store.front.write_text(json.dumps(points))
    meta = {"primary_metric": "params", "primary_column": "params", "parent": {"params": 1.0}}
    store.front_meta.write_text(json.dumps(meta))
    lines = []
    records = api.evaluate(
        "job1", ["parent", "p0", "pp"], ["nas_next_word"], LIMIT, store.root, report=lines.append
    )
    return store, records, lines


def test_local_task_ships_with_the_project():
    assert "nas_next_word" in local_tasks()


def test_parent_and_students_get_accuracies(evaluated):
    store, records, lines = evaluated
    acc = {p: r["columns"]["eval_nas_next_word_acc"] for p, r in records.items()}
    assert all(0.0 <= a <= 1.0 for a in acc.values())
    assert records["parent"]["samples"]["nas_next_word"] == LIMIT
    assert records["parent"]["limits"] == {"nas_next_word": LIMIT}
    # all-parent choices: the same logits, so exactly the parent's accuracy
    assert acc["pp"] == acc["parent"]
    assert records["pp"]["tasks"] == records["parent"]["tasks"]
    # a real student is a different model: its summed log-likelihoods differ from the parent's
    assert records["p0"]["tasks"]["nas_next_word"] != records["parent"]["tasks"]["nas_next_word"]
    assert any(line.startswith("[eval] p0: nas_next_word acc ") for line in lines)
    for point in ("parent", "p0", "pp"):
        stored = json.loads(store.eval_record(point).read_text())
        assert stored["columns"]["eval_nas_next_word_acc"] == acc[point]


def test_pareto_joins_the_accuracies(evaluated, tmp_path):
    store, records, _ = evaluated
    frame = api.pareto("job1", store.root)
    by_id = dict(zip(frame["point_id"], frame["eval_nas_next_word_acc"], strict=True))
    assert by_id == {p: records[p]["columns"]["eval_nas_next_word_acc"] for p in ("p0", "pp")}
    parent = frame.attrs["meta"]["parent"]
    assert (
        parent["eval_nas_next_word_acc"] == records["parent"]["columns"]["eval_nas_next_word_acc"]
    )
    # joined, not written into the front
    assert "eval_nas_next_word_acc" not in store.front_records()[0]
    page = api.plot_pareto("job1", tmp_path / "front.html", store.root).read_text()
    assert "lm-eval nas_next_word_acc (accuracy)" in page  # a panel per accuracy column


def test_wrapper_generates_the_models_greedy_tokens(stories_parent):
    from lm_eval.api.instance import Instance

    from compress.lm_eval_model import BlockModelLM

    parent = stories_parent.adapter
    lm = BlockModelLM(parent, stories_parent.tokenizer, max_length=512, name="parent")
    context = "Once upon a time, there was a little girl"
    request = Instance("generate_until", {}, (context, {"until": ["\n\n"], "max_gen_toks": 12}), 0)
    text = lm.generate_until([request])[0]
    ids = torch.tensor([[lm.prefix_token, *lm.encode(context)]])
    want = stories_parent.tokenizer.decode(parent.generate_greedy(ids, 12)[0].tolist())
    assert text == want and len(text) > 20  # no stop string and no EOS within 12 tokens
    stop = Instance("generate_until", {}, (context, {"until": [want.split()[1]]}), 0)
    assert lm.generate_until([stop])[0] == want[: want.index(want.split()[1])]
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (context,), 0)])[0]
    pair = lm.loglikelihood([Instance("loglikelihood", {}, ("", context), 0)])[0]
    assert rolling == pytest.approx(pair[0], rel=1e-5) and rolling < 0


@torch.no_grad()
def test_batched_loglikelihood_equals_one_sequence_at_a_time(stories_parent):
    from compress.lm_eval_model import BlockModelLM

    parent = stories_parent.adapter
    lm = BlockModelLM(parent, stories_parent.tokenizer, max_length=512, batch_size=3)
    texts = [
        ("Once upon a time there was a", " little girl"),
        ("The cat sat on the ", "mat"),  # the context's trailing space moves to the continuation
        ("Tom and Lily went to the park to", " play with a ball"),
    ]
    pairs = [lm._split(context, continuation) for context, continuation in texts]
    assert pairs[1][1] == lm.encode(" mat")[-len(pairs[1][1]) :]
    for (context, continuation), (logprob, greedy) in zip(
        pairs, lm.score(pairs, "[t]"), strict=True
    ):
        ids = torch.tensor([context + continuation])
        logits = torch.log_softmax(parent(ids[:, :-1]).float(), -1)[0, len(context) - 1 :]
        want = logits.gather(1, torch.tensor(continuation)[:, None]).sum()
        assert logprob == pytest.approx(float(want), abs=1e-4)
        assert greedy == bool((logits.argmax(-1) == torch.tensor(continuation)).all())


def test_one_line_errors(evaluated, tmp_path):
    store, _, _ = evaluated
    with pytest.raises(EvalError, match="unknown lm-eval task 'no_such_task'; local tasks: nas"):
        api.evaluate("job1", ["parent"], ["no_such_task"], 1, store.root)
    with pytest.raises(JobError, match="no job nojob"):
        api.evaluate("nojob", None, None, 1, store.root)
    run = nas("eval", "job1", "--point", "zz", "--limit", "1", "--results", store.root)
    assert run.returncode == 2
    assert run.stderr.strip() == "error: job job1 has no point 'zz'; points: p0, pp"
