"""The selection problem as plain data: per layer, the attention and FFN options with a score and
costs; budgets and human targets converted to costs; the typed ``Infeasible`` result.

Everything here is pure Python over numbers (no torch, no ray), so it can be tested, pickled and
round-tripped through JSON.

Cost metrics (each option carries every metric of its problem, fixed costs add once):

- ``prefill_latency_ms``: runtime of one prefill at the spec's batch and prompt length (ms).
- ``decode_latency_ms``: runtime of one decode step at the spec's batch and KV context (ms); one
  step yields one new token for each of the ``batch`` sequences.
- ``params``: parameter count.
- ``memory_mib``: weights plus KV cache at the spec's batch and context, in MiB (2**20 bytes):
  per attention subblock the cache is ``2 * kv_heads * head_dim * context * batch * bytes``.

Human targets translate to cost budgets (``resolve_target``):

- ``throughput_tps`` (generated tokens/s at the decode batch) -> a decode-step budget
  ``decode_latency_ms <= 1000 * batch / tps``; a relative value ``r`` means ``r`` times the parent's
  throughput, i.e. ``decode_latency_ms <= parent_decode_ms / r``.
- ``ttft_ms`` (time to first token) -> ``prefill_latency_ms <= ttft_ms``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from nas.selection.errors import InfeasibleBudget, SelectionError

COST_METRICS: tuple[str, ...] = ("prefill_latency_ms", "decode_latency_ms", "params", "memory_mib")
LATENCY_METRICS: tuple[str, ...] = ("prefill_latency_ms", "decode_latency_ms")
TARGET_METRICS: tuple[str, ...] = (*COST_METRICS, "throughput_tps", "ttft_ms")
KINDS: tuple[str, str] = ("attention", "ffn")
MIB = float(2**20)

# indices of the chosen (attention option, FFN option) per layer
Indices = tuple[tuple[int, int], ...]
# canonical variant names of the chosen (attention, FFN) per layer
Choices = tuple[tuple[str, str], ...]


def _number(value, what: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return out


@dataclass(frozen=True)
class Option:
    """One variant of one subblock of one layer: its canonical name, score and costs.

    ``score`` is the replace-one-block quality loss (KL from the parent, >= 0; the parent is 0).
    ``costs`` maps every metric of the problem to this subblock's share (fixed costs excluded).
    """

    variant: str
    score: float
    costs: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.variant, str) or not self.variant:
            raise ValueError(f"option variant must be a canonical name, got {self.variant!r}")
        score = _number(self.score, f"score of {self.variant}")
        if score < 0:
            raise ValueError(f"score of {self.variant} must be >= 0, got {score}")
        object.__setattr__(self, "score", score)
        object.__setattr__(
            self,
            "costs",
            {m: _number(v, f"{m} of {self.variant}") for m, v in dict(self.costs).items()},
        )

    def to_dict(self) -> dict:
        return {"variant": self.variant, "score": self.score, "costs": dict(self.costs)}

    @classmethod
    def from_dict(cls, data: Mapping) -> Option:
        return cls(data["variant"], data["score"], dict(data["costs"]))


@dataclass(frozen=True)
class LayerOptions:
    """The attention and FFN options of one layer (each non-empty, names unique per kind)."""

    attention: tuple[Option, ...]
    ffn: tuple[Option, ...]

    def __post_init__(self) -> None:
        for kind in KINDS:
            options = tuple(getattr(self, kind))
            object.__setattr__(self, kind, options)
            if not options:
                raise ValueError(f"a layer needs at least one {kind} option")
            names = [o.variant for o in options]
            if len(set(names)) != len(names):
                raise ValueError(f"duplicate {kind} options: {names}")

    def options(self, kind: str) -> tuple[Option, ...]:
        return self.attention if kind == "attention" else self.ffn

    def to_dict(self) -> dict:
        return {k: [o.to_dict() for o in self.options(k)] for k in KINDS}

    @classmethod
    def from_dict(cls, data: Mapping) -> LayerOptions:
        return cls(*(tuple(Option.from_dict(o) for o in data[k]) for k in KINDS))


@dataclass(frozen=True)
class SelectionProblem:
    """Per layer the options to choose from, plus the fixed costs (embeddings, final norm, head).

    Every option carries the same cost metrics (``metrics``); a fixed cost missing for a metric
    counts as 0. Choosing exactly one attention and one FFN option per layer gives a student whose
    cost is ``fixed + sum of its options' costs`` and whose predicted quality loss is the sum of
    its options' scores.
    """

    layers: tuple[LayerOptions, ...]
    fixed_costs: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        object.__setattr__(self, "layers", layers)
        if not layers:
            raise ValueError("a selection problem needs at least one layer")
        metrics = set(layers[0].attention[0].costs)
        for i, layer in enumerate(layers):
            for kind in KINDS:
                for option in layer.options(kind):
                    if set(option.costs) != metrics:
                        raise ValueError(
                            f"layer {i} {option.variant} has costs {sorted(option.costs)}, "
                            f"expected {sorted(metrics)}"
                        )
        fixed = {m: _number(v, f"fixed {m}") for m, v in dict(self.fixed_costs).items()}
        unknown = set(fixed) - metrics
        if unknown:
            raise ValueError(f"fixed costs for metrics no option has: {sorted(unknown)}")
        object.__setattr__(self, "fixed_costs", fixed)

    # --- shape ---------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def metrics(self) -> tuple[str, ...]:
        """Cost metrics of this problem, in ``COST_METRICS`` order (then any others, sorted)."""
        have = set(self.layers[0].attention[0].costs)
        return tuple(m for m in COST_METRICS if m in have) + tuple(sorted(have - set(COST_METRICS)))

    def fixed(self, metric: str) -> float:
        return self.fixed_costs.get(metric, 0.0)

    def _check_metric(self, metric: str) -> None:
        if metric not in self.metrics:
            raise SelectionError(
                f"no {metric} costs in this problem (it has: {', '.join(self.metrics) or 'none'}); "
                "profile that phase or pick another target"
            )

    # --- evaluating a choice -------------------------------------------------------------------
    def cost(self, indices: Indices, metric: str) -> float:
        """Total cost of a choice (fixed cost included)."""
        self._check_metric(metric)
        total = self.fixed(metric)
        for layer, (a, f) in zip(self.layers, indices, strict=True):
            total += layer.attention[a].costs[metric] + layer.ffn[f].costs[metric]
        return total

    def costs(self, indices: Indices) -> dict[str, float]:
        return {m: self.cost(indices, m) for m in self.metrics}

    def score(self, indices: Indices) -> float:
        """Predicted quality loss of a choice: the sum of its options' scores."""
        return sum(
            layer.attention[a].score + layer.ffn[f].score
            for layer, (a, f) in zip(self.layers, indices, strict=True)
        )

    def min_cost(self, metric: str) -> float:
        """The exact smallest achievable cost: each subblock at its cheapest option."""
        self._check_metric(metric)
        return self.fixed(metric) + sum(
            min(o.costs[metric] for o in layer.attention) + min(o.costs[metric] for o in layer.ffn)
            for layer in self.layers
        )

    # --- names <-> indices ---------------------------------------------------------------------
    def names(self, indices: Indices) -> Choices:
        return tuple(
            (layer.attention[a].variant, layer.ffn[f].variant)
            for layer, (a, f) in zip(self.layers, indices, strict=True)
        )

    def indices(self, choices: Sequence[Sequence[str]]) -> Indices:
        """Inverse of ``names``; raises ``SelectionError`` naming an unknown variant."""
        if len(choices) != self.num_layers:
            raise SelectionError(
                f"a choice needs {self.num_layers} layers, got {len(choices)} entries"
            )
        out = []
        for i, (layer, pair) in enumerate(zip(self.layers, choices, strict=True)):
            idx = []
            for kind, name in zip(KINDS, pair, strict=True):
                names = [o.variant for o in layer.options(kind)]
                if name not in names:
                    raise SelectionError(f"layer {i} has no {kind} option {name!r} (has {names})")
                idx.append(names.index(name))
            out.append((idx[0], idx[1]))
        return tuple(out)

    def parent_indices(self) -> Indices:
        """The all-parent choice (``attention:parent``, ``ffn:parent`` in every layer)."""
        return self.indices([("attention:parent", "ffn:parent")] * self.num_layers)

    # --- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "layers": [layer.to_dict() for layer in self.layers],
            "fixed_costs": dict(self.fixed_costs),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> SelectionProblem:
        return cls(
            tuple(LayerOptions.from_dict(layer) for layer in data["layers"]),
            dict(data.get("fixed_costs", {})),
        )


@dataclass(frozen=True)
class Solution:
    """One selected student: its choices, predicted score and costs (fixed costs included).

    ``status`` is ``optimal`` (proven), ``time_limit`` (feasible, stopped by the time limit) or
    ``heuristic`` (a strategy without an optimality claim, e.g. greedy).
    """

    indices: Indices
    choices: Choices
    score: float
    costs: dict[str, float]
    status: str
    strategy: str
    solve_s: float = 0.0

    @classmethod
    def of(
        cls, problem: SelectionProblem, indices: Indices, status: str, strategy: str, solve_s=0.0
    ) -> Solution:
        indices = tuple((int(a), int(f)) for a, f in indices)
        return cls(
            indices,
            problem.names(indices),
            problem.score(indices),
            problem.costs(indices),
            status,
            strategy,
            float(solve_s),
        )


@dataclass(frozen=True)
class Budget:
    """A cost budget (``problem cost <= value``) and the human target it came from."""

    metric: str
    value: float
    target_metric: str
    target_value: float

    @property
    def label(self) -> str:
        op = ">=" if self.target_metric == "throughput_tps" else "<="
        return f"{self.target_metric}{op}{self.target_value:.6g}"


@dataclass(frozen=True)
class Infeasible:
    """No choice meets ``metric <= budget``; ``smallest_achievable`` is the exact minimum.

    ``given_other_budgets`` is true when the minimum was computed under the other budgets of the
    same request (each budget alone is feasible, together they are not). ``target`` is the human
    target the budget came from, if any (e.g. a throughput), to phrase the message in its units.
    """

    metric: str
    budget: float
    smallest_achievable: float
    given_other_budgets: bool = False
    target: Budget | None = None
    batch: int = 1

    def message(self) -> str:
        where = (
            "under the other budgets"
            if self.given_other_budgets
            else "with the cheapest variant in every layer"
        )
        if self.target is not None and self.target.target_metric == "throughput_tps":
            best = 1000.0 * self.batch / self.smallest_achievable
            return (
                f"infeasible target throughput_tps >= {self.target.target_value:.6g}: the largest "
                f"achievable is {best:.6g} tokens/s (decode step {self.smallest_achievable:.6g} ms, "
                f"{where})"
            )
        name = self.target.target_metric if self.target is not None else self.metric
        return (
            f"infeasible budget {name} <= {self.budget:.6g}: the smallest achievable {name} is "
            f"{self.smallest_achievable:.6g} ({where})"
        )

    def error(self) -> InfeasibleBudget:
        return InfeasibleBudget(self.message(), self)


def resolve_target(
    problem: SelectionProblem, metric: str, value: float, relative: bool, batch: int = 1
) -> Budget:
    """Turn a spec target value into a cost budget (see the module docstring for conventions).

    Relative values are ratios of the all-parent choice's cost (for ``throughput_tps``: of the
    parent's throughput). Raises ``SelectionError`` for an unknown metric or a non-positive value.
    """
    if metric not in TARGET_METRICS:
        raise SelectionError(
            f"unknown target metric {metric!r}; known: {', '.join(TARGET_METRICS)}"
        )
    if not value > 0:
        raise SelectionError(f"target {metric} must be positive, got {value}")
    if batch < 1:
        raise SelectionError(f"batch must be >= 1, got {batch}")
    if metric == "throughput_tps":
        parent = problem.cost(problem.parent_indices(), "decode_latency_ms")
        if relative:
            return Budget(
                "decode_latency_ms", parent / value, metric, value * 1000.0 * batch / parent
            )
        return Budget("decode_latency_ms", 1000.0 * batch / value, metric, value)
    cost_metric = "prefill_latency_ms" if metric == "ttft_ms" else metric
    if relative:
        absolute = value * problem.cost(problem.parent_indices(), cost_metric)
        return Budget(cost_metric, absolute, metric, absolute)
    problem._check_metric(cost_metric)
    return Budget(cost_metric, float(value), metric, float(value))


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
    head_dim: int,
    parent_kv_heads: int,
    tied_embeddings: bool,
    score_column: str = "kl",
    latency: LatencyLookup | None = None,
    latency_metrics: Sequence[str] = (),
    fixed_latency_ms: Mapping[str, float] | None = None,
    batch: int = 1,
    context: int = 1,
    bytes_per_value: float = 4.0,
) -> SelectionProblem:
    """Build a problem from library rows (a DataFrame or dicts with ``layer``, ``kind``,
    ``variant``, ``params`` and ``score_column``) and a latency lookup (see ``profile_latency``).
    Pure: numbers in, numbers out.

    A missing ``*:parent`` row is added with score 0 and the parent's parameters taken from the
    row of a layer that has it (or raises). KV heads come from the canonical name
    (``attention:kv_heads=N``; parent -> ``parent_kv_heads``; linear and noop keep no cache).
    ``memory_mib`` = weights + KV cache at ``batch`` x ``context``; the fixed cost counts the
    embeddings, the head (unless tied) and the final norm. Raises ``SelectionError`` for a row
    without a score or a latency.
    """
    if hasattr(rows, "to_dict"):  # a pandas DataFrame such as nas.library.library_frame(...)
        rows = rows.to_dict("records")
    by_layer: dict[int, dict[str, dict[str, Option]]] = {
        i: {k: {} for k in KINDS} for i in range(num_layers)
    }
    fixed_latency = dict(fixed_latency_ms or {})

    def kv_heads(variant: str) -> int:
        kind, _, rest = variant.partition(":")
        if kind != "attention" or rest in ("noop", "linear"):
            return 0
        if rest == "parent":
            return parent_kv_heads
        if rest.startswith("kv_heads="):
            return int(rest.split("=", 1)[1])
        raise SelectionError(f"cannot tell the KV heads of {variant!r}")

    def option(layer: int, kind: str, variant: str, params: float, score) -> Option:
        if score is None or (isinstance(score, float) and math.isnan(score)):
            raise SelectionError(
                f"layer {layer} {variant} has no {score_column} score; run the scoring stage first"
            )
        score = float(score)
        if -1e-6 < score < 0:  # numerical noise around the parent's zero
            score = 0.0
        costs = {
            "params": float(params),
            "memory_mib": weights_mib(params, bytes_per_value)
            + kv_cache_mib(kv_heads(variant), head_dim, context, batch, bytes_per_value),
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

    parent_params: dict[str, float] = {}
    for row in rows:
        layer, kind, variant = int(row["layer"]), str(row["kind"]), str(row["variant"])
        if layer not in by_layer or kind not in KINDS:
            raise SelectionError(f"library row out of range: layer {layer} {kind} {variant}")
        score = 0.0 if variant.endswith(":parent") else row.get(score_column)
        by_layer[layer][kind][variant] = option(layer, kind, variant, row["params"], score)
        if variant.endswith(":parent"):
            parent_params[kind] = float(row["params"])
    layers = []
    for i in range(num_layers):
        for kind in KINDS:
            name = f"{kind}:parent"
            if name not in by_layer[i][kind]:
                if kind not in parent_params:
                    raise SelectionError(f"the library has no {name} row to take its size from")
                by_layer[i][kind][name] = option(i, kind, name, parent_params[kind], 0.0)
        layers.append(
            LayerOptions(
                *(tuple(sorted(by_layer[i][k].values(), key=_parent_first)) for k in KINDS)
            )
        )
    embed = vocab_size * hidden_size
    fixed_params = embed * (1 if tied_embeddings else 2) + hidden_size
    fixed = {
        "params": float(fixed_params),
        "memory_mib": weights_mib(fixed_params, bytes_per_value),
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


def _parent_first(option: Option) -> tuple[bool, str]:
    return (not option.variant.endswith(":parent"), option.variant)
