"""The front plot: labelled axes, predicted and measured points joined, the parent's measured
point, point ids, and one quality panel per eval set (``--quality``)."""

import pytest

from nas import api
from nas.pareto import Target, read_front, rewrite_front, select_front, write_front
from nas.pareto_plot import Quality, figure_data, parse_quality, plot_job
from nas.selection.errors import SelectionError
from nas.store import JobStore
from tests.synthetic import llama_problem
from tests.test_pareto import nas


@pytest.fixture(scope="module")
def measured_job(tmp_path_factory):
    """A synthetic front whose points carry measured columns, as the students stage writes
    them, on the calibration split and on one eval set ``general``."""
    root = tmp_path_factory.mktemp("results")
    store = JobStore.create(root, "plot-job", {"name": "plot-job"}, None)
    problem = llama_problem(8, seed=1)
    result = select_front(problem, [Target("prefill_latency_ms", (0.8, 0.6, 0.4))])
    write_front(store.dir, result, problem)
    frame = read_front(store.dir)
    frame["measured_latency_ms"] = frame["predicted_prefill_latency_ms"] * 1.05
    frame["measured_kl"] = frame["predicted_kl"] * 1.2
    frame["measured_perplexity"] = 10.0 + frame["measured_kl"]
    frame["measured_perplexity@general"] = 30.0 + 5 * frame["measured_kl"]
    frame["measured_kl@general"] = 2 * frame["measured_kl"]
    parent = frame.attrs["meta"]["parent"] | {
        "measured_latency_ms": frame.attrs["meta"]["parent"]["predicted_prefill_latency_ms"] * 1.05,
        "measured_perplexity": 10.0,
        "measured_perplexity@general": 30.0,
    }
    rewrite_front(store.dir, frame, eval_sets=["general"], parent=parent)
    return root, store


def test_figure_joins_predicted_and_measured(measured_job):
    _, store = measured_job
    frame = read_front(store.dir)
    data = figure_data(frame, frame.attrs["meta"], frame.iloc[:0])
    assert data.x_label == "prefill latency (ms)"
    assert len(data.measured) == len(frame)
    for px, py, mx, mk, _pid in data.measured:
        assert mx == pytest.approx(px * 1.05) and mk == pytest.approx(py * 1.2)
    assert data.parent["x"] < data.parent["measured_latency_ms"]
    (q, points), *more = data.panels
    assert not more and q == Quality("general") and q.column == "measured_perplexity@general"
    assert sorted(p[2] for p in points) == sorted(frame["point_id"])


def test_quality_choice_and_unknown_set(measured_job):
    _, store = measured_job
    meta = read_front(store.dir).attrs["meta"]
    assert parse_quality(["general:kl"], meta) == [Quality("general", "kl")]
    assert parse_quality(None, {}) == [Quality(None)]  # no eval sets: the calibration split
    assert Quality(None).column == "measured_perplexity"
    with pytest.raises(
        SelectionError, match="unknown eval set 'books'; this job's eval sets: general"
    ):
        parse_quality(["books"], meta)


def test_png_and_html(measured_job, tmp_path):
    root, store = measured_job
    png = plot_job(store.dir, tmp_path / "front.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = api.plot_pareto(store.job_id, tmp_path / "front.html", root, ["general:kl"]).read_text()
    for text in (
        "prefill latency (ms): predicted (filled) or measured (hollow)",
        "KL to the parent (nats/token) on general",
        "measured prefill latency (ms)",
        "parent (measured)",
        *read_front(store.dir)["point_id"],
    ):
        assert text in page, text
    out = nas(
        "pareto", store.job_id, "--results", root, "--plot", tmp_path / "x.png", "--quality", "nope"
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "error: unknown eval set 'nope'; this job's eval sets: general"
