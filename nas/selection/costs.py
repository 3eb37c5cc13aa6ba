"""Budgets and human targets converted to costs, the typed ``Infeasible`` result, and the costs of
a job's variants (``problem_from_library``). Pure Python over numbers (no torch, no ray).

Cost metrics (each pair of a layer carries every metric of its problem, fixed costs add once;
a block library may add custom metrics by name):

- ``prefill_latency_ms``: runtime of one prefill at the profile's batch and prompt length (ms).
- ``decode_latency_ms``: runtime of one decode step at the profile's batch and KV context (ms); one
  step yields one new token for each of the ``batch`` sequences.
- ``params``: parameter count.
- ``kv_cache_mib``: KV cache at the decode batch x context, in MiB (2**20 bytes): per attention
  subblock ``2 * kv_heads * head_dim * context * batch * bytes``.
- ``memory_mib``: weights at the export precision (fp32 4 bytes, fp16/bf16 2, int8/fp8 1) plus
  the KV cache plus the activations (a fixed cost) at that batch.

A target is a set of bounds solved together; each bound is ``metric <= value`` (``max``) or
``metric >= value`` (``min``) on a cost metric, or a human target (``resolve_target``):

- ``decode_throughput_tps`` (alias ``throughput_tps``; generated tokens/s at the profile's decode
  batch ``B``) ``>= t`` -> ``decode_latency_ms <= 1000 * B * steps / t`` (``steps``: tokens per
  sequence one measured decode runtime covers, 1 for a per-step profile); a relative value ``r``
  means ``r`` times the parent's throughput.
- ``prefill_throughput_tps`` (prompt tokens/s) ``>= t`` -> ``prefill_latency_ms <= 1000 * B * S / t``
  at the prefill profile's batch ``B`` and prompt length ``S`` (``Workload.prefill_tokens = B*S``).
- ``ttft_ms`` (time to first token) -> ``prefill_latency_ms <= ttft_ms``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from nas.selection.errors import InfeasibleBudget, SelectionError
from nas.selection.problem import (
    COST_METRICS,
    KINDS,
    Block,
    Choices,
    Indices,
    LayerOptions,
    Option,
    SelectionProblem,
    Solution,
    finite_number,
)

LATENCY_METRICS: tuple[str, ...] = ("prefill_latency_ms", "decode_latency_ms")
# human target -> the cost metric it bounds
THROUGHPUT_TARGETS: dict[str, str] = {
    "throughput_tps": "decode_latency_ms",
    "decode_throughput_tps": "decode_latency_ms",
    "prefill_throughput_tps": "prefill_latency_ms",
}
TARGET_METRICS: tuple[str, ...] = (*COST_METRICS, *THROUGHPUT_TARGETS, "ttft_ms")
MIB = float(2**20)
BYTES_PER_VALUE: dict[str, float] = {
    "fp32": 4.0,
    "float32": 4.0,
    "fp16": 2.0,
    "float16": 2.0,
    "bf16": 2.0,
    "bfloat16": 2.0,
    "int8": 1.0,
    "fp8": 1.0,
}
BOUNDS = ("max", "min")

__all__ = [
    "COST_METRICS",
    "KINDS",
    "Block",
    "Choices",
    "Indices",
    "LayerOptions",
    "Option",
    "SelectionProblem",
    "Solution",
]


@dataclass(frozen=True)
class Workload:
    """What one measured runtime covers, to turn throughputs into runtimes: a decode run yields
    ``decode_steps`` new tokens for each of ``batch`` sequences; a prefill run reads
    ``prefill_tokens`` prompt tokens in all (its batch x prompt length)."""

    batch: int = 1
    prefill_tokens: int = 1
    decode_steps: int = 1

    def tokens(self, metric: str) -> float:
        """Tokens one run of ``metric`` (a latency) yields over the whole batch."""
        if metric == "prefill_latency_ms":
            return float(self.prefill_tokens)
        return float(self.batch * self.decode_steps)


@dataclass(frozen=True)
class Budget:
    """One bound on a cost (``cost <= value`` for ``bound="max"``, ``>=`` for ``"min"``) and the
    human target it came from (e.g. ``decode_throughput_tps >= 900`` for a decode-step budget)."""

    metric: str
    value: float
    target_metric: str
    target_value: float
    bound: str = "max"

    def __post_init__(self) -> None:
        if self.bound not in BOUNDS:
            raise SelectionError(f"a bound is 'max' or 'min', got {self.bound!r}")

    @property
    def op(self) -> str:
        """The operator of the human target (a throughput flips the cost bound's)."""
        flip = self.target_metric in THROUGHPUT_TARGETS
        return "<=" if (self.bound == "max") != flip else ">="

    @property
    def label(self) -> str:
        return f"{self.target_metric}{self.op}{self.target_value:.6g}"

    def holds(self, cost: float) -> bool:
        """True when ``cost`` meets the bound (within ``BUDGET_RTOL``)."""
        slack = BUDGET_RTOL * max(1.0, abs(self.value))
        return cost <= self.value + slack if self.bound == "max" else cost >= self.value - slack


# a solution may miss a bound by this relative amount (the solver's feasibility tolerance)
BUDGET_RTOL = 1e-6


def parse_bound(text: str) -> tuple[str, str, float]:
    """``"memory_mib<=80000"`` -> ``("memory_mib", "max", 80000.0)``; ``>=`` gives ``"min"``.
    Raises ``SelectionError`` (one line) for anything else."""
    match = re.fullmatch(r"\s*([A-Za-z_][\w.]*)\s*(<=|>=)\s*(\S+)\s*", text)
    if not match:
        raise SelectionError(f"a bound reads METRIC<=VALUE or METRIC>=VALUE, got {text!r}")
    metric, op, value = match.groups()
    number = finite_number(value, f"the value of bound {text!r}", SelectionError)
    return metric, "max" if op == "<=" else "min", number


@dataclass(frozen=True)
class Infeasible:
    """No choice meets a bound; ``smallest_achievable`` is the exact best value of its metric
    (the smallest for a ``max`` bound, the largest for a ``min`` bound).

    ``given_other_budgets`` is true when that value was computed under the other bounds of the
    same request (each bound alone is feasible, together they are not: this one binds). ``target``
    is the bound as requested (e.g. a throughput), to phrase the message in its units;
    ``workload`` turns a runtime back into a throughput.
    """

    metric: str
    budget: float
    smallest_achievable: float
    given_other_budgets: bool = False
    target: Budget | None = None
    batch: int = 1
    workload: Workload | None = None

    @property
    def bound(self) -> str:
        return self.target.bound if self.target is not None else "max"

    def message(self) -> str:
        where = (
            "under the other bounds"
            if self.given_other_budgets
            else "with the cheapest variant in every layer"
            if self.bound == "max"
            else "with the largest variant in every layer"
        )
        target = self.target
        if target is not None and target.target_metric in THROUGHPUT_TARGETS:
            workload = self.workload or Workload(self.batch)
            best = 1000.0 * workload.tokens(target.metric) / self.smallest_achievable
            return (
                f"infeasible target {target.target_metric} >= {target.target_value:.6g}: the "
                f"largest achievable is {best:.6g} tokens/s ({target.metric} "
                f"{self.smallest_achievable:.6g} ms, {where})"
            )
        name = target.target_metric if target is not None else self.metric
        op, best = ("<=", "smallest") if self.bound == "max" else (">=", "largest")
        return (
            f"infeasible bound {name} {op} {self.budget:.6g}: the {best} achievable {name} is "
            f"{self.smallest_achievable:.6g} ({where})"
        )

    def error(self) -> InfeasibleBudget:
        return InfeasibleBudget(self.message(), self)


def resolve_target(
    problem: SelectionProblem,
    metric: str,
    value: float,
    relative: bool,
    batch: int = 1,
    bound: str | None = None,
    workload: Workload | None = None,
) -> Budget:
    """Turn a target bound into a cost budget (see the module docstring for conventions).

    ``metric``: a cost metric of the problem (custom ones by name) or a human target
    (``TARGET_METRICS``). ``bound``: ``max`` or ``min``; default ``min`` for throughputs, ``max``
    otherwise. Relative values are ratios of the parent choice's cost (for throughputs: of the
    parent's throughput). ``workload`` (default: ``batch`` sequences, one token each) converts
    throughputs. Raises ``SelectionError`` for an unknown metric or a non-positive throughput.
    """
    workload = workload or Workload(batch)
    if workload.batch < 1:
        raise SelectionError(f"batch must be >= 1, got {workload.batch}")
    human = metric in THROUGHPUT_TARGETS or metric == "ttft_ms"
    if not human and metric not in problem.metrics:
        known = [*problem.metrics, *THROUGHPUT_TARGETS, "ttft_ms"]
        raise SelectionError(
            f"unknown target metric {metric!r}; this problem has: {', '.join(known)}"
        )
    value = finite_number(value, f"target {metric}", SelectionError)
    if metric in THROUGHPUT_TARGETS:
        bound = bound or "min"
        cost_metric = THROUGHPUT_TARGETS[metric]
        problem._check_metric(cost_metric)
        if not value > 0:
            raise SelectionError(f"target {metric} must be positive, got {value}")
        tokens = 1000.0 * workload.tokens(cost_metric)
        flipped = "max" if bound == "min" else "min"
        if relative:
            parent = problem.cost(problem.parent_indices(), cost_metric)
            return Budget(cost_metric, parent / value, metric, value * tokens / parent, flipped)
        return Budget(cost_metric, tokens / value, metric, value, flipped)
    bound = bound or "max"
    cost_metric = "prefill_latency_ms" if metric == "ttft_ms" else metric
    problem._check_metric(cost_metric)
    if relative:
        if not value > 0:
            raise SelectionError(f"relative target {metric} must be positive, got {value}")
        absolute = value * problem.cost(problem.parent_indices(), cost_metric)
        return Budget(cost_metric, absolute, metric, absolute, bound)
    return Budget(cost_metric, value, metric, value, bound)


# --- costs of variants for a model shape (pure arithmetic) -------------------------------------
def kv_cache_mib(
    kv_heads: int, head_dim: int, context: int, batch: int, bytes_per_value: float
) -> float:
    """KV cache of one attention subblock: keys and values for ``context`` tokens per sequence."""
    return 2.0 * kv_heads * head_dim * context * batch * bytes_per_value / MIB


def weights_mib(params: float, bytes_per_value: float) -> float:
    return params * bytes_per_value / MIB


LatencyLookup = Callable[[str, int, str], float]
"""``latency(metric, layer, variant) -> ms`` for one subblock; raises ``KeyError`` if unknown."""


def problem_from_library(
    rows: Iterable[Mapping],
    *,
    num_layers: int,
    hidden_size: int,
    vocab_size: int,
    tied_embeddings: bool,
    score_column: str = "kl",
    latency: LatencyLookup | None = None,
    latency_metrics: Sequence[str] = (),
    fixed_latency_ms: Mapping[str, float] | None = None,
    batch: int = 1,
    context: int = 1,
    bytes_per_value: float = 4.0,
    weight_bytes: float | None = None,
    activations_mib: float = 0.0,
    joint_scores: Mapping[tuple[int, str, str], float] | None = None,
) -> SelectionProblem:
    """Build a problem from library rows (a DataFrame or dicts with ``layer``, ``kind``,
    ``variant``, the cost features ``params``, ``kv_values_per_token`` and ``kv_window`` of
    ``nas.library.library_frame`` and ``score_column``) and a latency lookup (see
    ``profile_latency``). Pure: numbers in, numbers out; variant names are only labels.

    A missing ``*:parent`` row is added with score 0 and the cost features of the row of a
    layer that has it (or raises). ``kv_cache_mib``: ``kv_values_per_token`` x the tokens
    cached (``context``, or ``kv_window`` when that is smaller and not 0) x ``batch`` in
    ``bytes_per_value``;
    ``memory_mib`` = weights in ``weight_bytes`` (default ``bytes_per_value``; 1 for int8/fp8
    export) + KV cache + ``activations_mib`` (a fixed cost); the fixed cost also counts the
    embeddings, the head (unless tied) and the final norm. ``joint_scores`` (``{(layer, attention,
    ffn): score}``, from ``scoring.blocks: joint``) makes each layer it covers a joint layer whose
    blocks are the scored pairs plus the parent pair (score 0); block costs are the subblocks'
    sums. Raises ``SelectionError`` for a row without a score or a latency.
    """
    weight_bytes = bytes_per_value if weight_bytes is None else weight_bytes
    if hasattr(rows, "to_dict"):  # a pandas DataFrame such as nas.library.library_frame(...)
        rows = rows.to_dict("records")
    by_layer: dict[int, dict[str, dict[str, Option]]] = {
        i: {k: {} for k in KINDS} for i in range(num_layers)
    }
    fixed_latency = dict(fixed_latency_ms or {})

    def option(layer: int, kind: str, variant: str, row: Mapping, score) -> Option:
        if score is None or (isinstance(score, float) and math.isnan(score)):
            raise SelectionError(
                f"layer {layer} {variant} has no {score_column} score; run the scoring stage first"
            )
        score = float(score)
        if -1e-6 < score < 0:  # numerical noise around the parent's zero
            score = 0.0
        try:
            params, per_token = float(row["params"]), float(row["kv_values_per_token"])
            window = int(row["kv_window"])
        except KeyError as exc:
            raise SelectionError(f"library row of layer {layer} {variant} lacks {exc}") from None
        tokens = min(context, window) if window > 0 else context
        kv = per_token * tokens * batch * bytes_per_value / MIB
        costs = {
            "params": float(params),
            "kv_cache_mib": kv,
            "memory_mib": weights_mib(params, weight_bytes) + kv,
        }
        for metric in latency_metrics:
            if latency is None:
                raise SelectionError(f"no latency lookup for {metric}")
            try:
                costs[metric] = float(latency(metric, layer, variant))
            except KeyError:
                raise SelectionError(
                    f"the hardware profile has no {metric} for layer {layer} {variant}"
                ) from None
        return Option(variant, score, costs)

    parent_rows: dict[str, Mapping] = {}
    for row in rows:
        layer, kind, variant = int(row["layer"]), str(row["kind"]), str(row["variant"])
        if layer not in by_layer or kind not in KINDS:
            raise SelectionError(f"library row out of range: layer {layer} {kind} {variant}")
        score = 0.0 if variant.endswith(":parent") else row.get(score_column)
        by_layer[layer][kind][variant] = option(layer, kind, variant, row, score)
        if variant.endswith(":parent"):
            parent_rows[kind] = row
    layers = []
    for i in range(num_layers):
        for kind in KINDS:
            name = f"{kind}:parent"
            if name not in by_layer[i][kind]:
                if kind not in parent_rows:
                    raise SelectionError(f"the library has no {name} row to take its size from")
                by_layer[i][kind][name] = option(i, kind, name, parent_rows[kind], 0.0)
        layer = LayerOptions(
            *(tuple(sorted(by_layer[i][k].values(), key=_parent_first)) for k in KINDS)
        )
        pairs = {(a, f): s for (j, a, f), s in (joint_scores or {}).items() if j == i}
        layers.append(_joint_layer(layer, pairs) if pairs else layer)
    embed = vocab_size * hidden_size
    fixed_params = embed * (1 if tied_embeddings else 2) + hidden_size
    fixed = {
        "params": float(fixed_params),
        "kv_cache_mib": 0.0,
        "memory_mib": weights_mib(fixed_params, weight_bytes) + float(activations_mib),
    }
    for metric in latency_metrics:
        fixed[metric] = float(fixed_latency.get(metric, 0.0))
    return SelectionProblem(tuple(layers), fixed)


def profile_latency(profiles: Mapping[str, object]) -> tuple[LatencyLookup, dict[str, float]]:
    """A latency lookup and fixed costs from ``{metric: profile}``, where each profile has
    ``entry(layer, variant) -> ms`` and ``fixed_ms`` (e.g. ``compress.profile.HardwareProfile``,
    one per phase: ``prefill_latency_ms`` and/or ``decode_latency_ms``)."""
    unknown = set(profiles) - set(LATENCY_METRICS)
    if unknown:
        raise SelectionError(f"profiles given for non-latency metrics {sorted(unknown)}")

    def lookup(metric: str, layer: int, variant: str) -> float:
        return float(profiles[metric].entry(layer, variant))

    return lookup, {m: float(p.fixed_ms) for m, p in profiles.items()}


def _joint_layer(layer: LayerOptions, scores: Mapping[tuple[str, str], float]):
    """The joint layer of the scored pairs (plus the parent pair, score 0) of an additive one."""
    names = {k: [o.variant for o in layer.options(k)] for k in KINDS}
    scores = {("attention:parent", "ffn:parent"): 0.0, **scores}
    blocks = []
    for (a, f), score in scores.items():
        if a not in names["attention"] or f not in names["ffn"]:
            continue  # a variant left out of the problem (pruned, unscored)
        ia, jf = names["attention"].index(a), names["ffn"].index(f)
        costs = {m: layer.pair_cost(ia, jf, m) for m in layer.metrics}
        blocks.append(Block(ia, jf, float(score), costs))
    blocks.sort(key=lambda b: (b.attention, b.ffn))
    return LayerOptions(layer.attention, layer.ffn, tuple(blocks))


def activations_mib(
    batch: int, tokens: int, hidden: int, intermediate: int, vocab: int, bytes_per_value: float
) -> float:
    """Peak live activations of one forward of ``batch`` x ``tokens`` (an estimate): the residual
    stream and a subblock's input and output (4 x hidden), the FFN's gate and up projections
    (2 x intermediate) and the logits (vocab), per token."""
    per_token = 4 * hidden + 2 * intermediate + vocab
    return batch * tokens * per_token * bytes_per_value / MIB


def _parent_first(option: Option) -> tuple[bool, str]:
    return (not option.variant.endswith(":parent"), option.variant)
