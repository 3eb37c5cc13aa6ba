"""The selection problem as plain data: per layer the attention and FFN options, and optionally the
joint blocks (an attention variant and an FFN variant scored together); the selected ``Solution``.

Two kinds of layer:

- **additive** (subblock scoring, the cheap default): every (attention, FFN) pair is allowed; its
  score and costs are the sums of the two options' scores and costs.
- **joint** (``scoring.blocks: joint``, or a block library such as Puzzle's): the layer lists its
  blocks, each a pair of option indices with its own measured score and costs. Only listed pairs
  can be chosen; a joint score need not be the sum of the subblock scores. The options of a joint
  layer only name the variants (their scores and costs are not used).

Scores are quality losses (lower is better; e.g. replace-one-block KL, or an LM-loss delta that may
be negative). Pure Python over numbers: no torch, no ray.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from nas.selection.errors import SelectionError

COST_METRICS: tuple[str, ...] = (
    "prefill_latency_ms",
    "decode_latency_ms",
    "params",
    "memory_mib",
    "kv_cache_mib",
)
KINDS: tuple[str, str] = ("attention", "ffn")
PARENT = ("attention:parent", "ffn:parent")

# indices of the chosen (attention option, FFN option) per layer
Indices = tuple[tuple[int, int], ...]
# canonical variant names of the chosen (attention, FFN) per layer
Choices = tuple[tuple[str, str], ...]  # per layer: (attention canonical, ffn canonical)


def finite_number(value, what: str, error: type[Exception] = ValueError) -> float:
    """``value`` as a finite float, or ``error`` naming ``what`` (one line)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise error(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise error(f"{what} must be finite, got {value!r}")
    return out


def _costs(costs: Mapping, what: str) -> dict[str, float]:
    return {m: finite_number(v, f"{m} of {what}") for m, v in dict(costs).items()}


@dataclass(frozen=True)
class Option:
    """One variant of one subblock of one layer: its canonical name, score and costs.

    ``score`` is the replace-one-block quality loss (the parent is 0; negative values, e.g. an
    LM-loss delta below the parent's, are allowed). ``costs`` maps every metric of the problem to
    this subblock's share (fixed costs excluded); empty in a joint layer.
    """

    variant: str
    score: float = 0.0
    costs: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.variant, str) or not self.variant:
            raise ValueError(f"option variant must be a non-empty name, got {self.variant!r}")
        object.__setattr__(self, "score", finite_number(self.score, f"score of {self.variant}"))
        object.__setattr__(self, "costs", _costs(self.costs, self.variant))

    def to_dict(self) -> dict:
        return {"variant": self.variant, "score": self.score, "costs": dict(self.costs)}

    @classmethod
    def from_dict(cls, data: Mapping) -> Option:
        return cls(data["variant"], data.get("score", 0.0), dict(data.get("costs", {})))


@dataclass(frozen=True)
class Block:
    """One joint block of a layer: option indices (into the layer's attention and FFN options),
    its measured score and its costs (every metric of the problem, fixed costs excluded)."""

    attention: int
    ffn: int
    score: float
    costs: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "score", finite_number(self.score, "block score"))
        object.__setattr__(self, "costs", _costs(self.costs, "a block"))

    def to_dict(self) -> dict:
        return {
            "attention": self.attention,
            "ffn": self.ffn,
            "score": self.score,
            "costs": dict(self.costs),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Block:
        return cls(int(data["attention"]), int(data["ffn"]), data["score"], dict(data["costs"]))


@dataclass(frozen=True)
class LayerOptions:
    """The attention and FFN options of one layer (each non-empty, names unique per kind) and, for
    a joint layer, its blocks (pairs unique, each with the same cost metrics)."""

    attention: tuple[Option, ...]
    ffn: tuple[Option, ...]
    blocks: tuple[Block, ...] = ()

    def __post_init__(self) -> None:
        for kind in KINDS:
            options = tuple(getattr(self, kind))
            object.__setattr__(self, kind, options)
            if not options:
                raise ValueError(f"a layer needs at least one {kind} option")
            names = [o.variant for o in options]
            if len(set(names)) != len(names):
                raise ValueError(f"duplicate {kind} options: {names}")
        blocks = tuple(self.blocks)
        object.__setattr__(self, "blocks", blocks)
        members = blocks if blocks else (*self.attention, *self.ffn)
        metrics = set(members[0].costs)
        for member in members:
            if set(member.costs) != metrics:
                raise ValueError(
                    f"{self._describe(member)} has costs {sorted(member.costs)}, "
                    f"expected {sorted(metrics)}"
                )
        pairs = [(b.attention, b.ffn) for b in blocks]
        if len(set(pairs)) != len(pairs):
            raise ValueError("duplicate joint blocks in a layer")
        for a, f in pairs:
            if not (0 <= a < len(self.attention) and 0 <= f < len(self.ffn)):
                raise ValueError(f"joint block ({a}, {f}) indexes a missing option")
        object.__setattr__(self, "_index", {p: j for j, p in enumerate(pairs)})

    def _describe(self, member) -> str:
        if isinstance(member, Block):
            return (
                f"block {self.attention[member.attention].variant} + {self.ffn[member.ffn].variant}"
            )
        return member.variant

    @classmethod
    def joint(cls, blocks: Iterable[tuple[str, str, float, Mapping[str, float]]]) -> LayerOptions:
        """A joint layer from ``(attention name, FFN name, score, costs)`` per block."""
        blocks = list(blocks)
        names: dict[str, dict[str, int]] = {k: {} for k in KINDS}
        for a, f, _, _ in blocks:
            names["attention"].setdefault(a, len(names["attention"]))
            names["ffn"].setdefault(f, len(names["ffn"]))
        return cls(
            tuple(Option(n) for n in names["attention"]),
            tuple(Option(n) for n in names["ffn"]),
            tuple(Block(names["attention"][a], names["ffn"][f], s, c) for a, f, s, c in blocks),
        )

    @property
    def is_joint(self) -> bool:
        return bool(self.blocks)

    @property
    def metrics(self) -> set[str]:
        return set((self.blocks[0] if self.blocks else self.attention[0]).costs)

    def options(self, kind: str) -> tuple[Option, ...]:
        return self.attention if kind == "attention" else self.ffn

    def pairs(self) -> list[tuple[int, int]]:
        """Every allowed (attention index, FFN index)."""
        if self.blocks:
            return [(b.attention, b.ffn) for b in self.blocks]
        return list(itertools.product(range(len(self.attention)), range(len(self.ffn))))

    def block(self, a: int, f: int) -> Block | None:
        """The joint block of a pair (None in an additive layer); raises ``SelectionError`` for a
        pair a joint layer does not list."""
        if not self.blocks:
            return None
        j = self._index.get((a, f))  # type: ignore[attr-defined]
        if j is None:
            raise SelectionError(
                f"no joint block {self.attention[a].variant} + {self.ffn[f].variant} in this layer"
            )
        return self.blocks[j]

    def pair_score(self, a: int, f: int) -> float:
        block = self.block(a, f)
        return block.score if block else self.attention[a].score + self.ffn[f].score

    def pair_cost(self, a: int, f: int, metric: str) -> float:
        block = self.block(a, f)
        if block:
            return block.costs[metric]
        return self.attention[a].costs[metric] + self.ffn[f].costs[metric]

    def min_cost(self, metric: str, largest: bool = False) -> float:
        pick = max if largest else min
        if self.blocks:
            return pick(b.costs[metric] for b in self.blocks)
        return pick(o.costs[metric] for o in self.attention) + pick(
            o.costs[metric] for o in self.ffn
        )

    def to_dict(self) -> dict:
        out = {k: [o.to_dict() for o in self.options(k)] for k in KINDS}
        if self.blocks:
            out["blocks"] = [b.to_dict() for b in self.blocks]
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> LayerOptions:
        return cls(
            *(tuple(Option.from_dict(o) for o in data[k]) for k in KINDS),
            tuple(Block.from_dict(b) for b in data.get("blocks", ())),
        )


@dataclass(frozen=True)
class SelectionProblem:
    """Per layer the options to choose from, plus the fixed costs (embeddings, final norm, head).

    Every layer carries the same cost metrics (``metrics``; any names, e.g. a custom one from a
    block library); a fixed cost missing for a metric counts as 0. Choosing one allowed
    (attention, FFN) pair per layer gives a student whose cost is ``fixed + sum of its pairs'
    costs`` and whose predicted quality loss is the sum of its pairs' scores.
    """

    layers: tuple[LayerOptions, ...]
    fixed_costs: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        object.__setattr__(self, "layers", layers)
        if not layers:
            raise ValueError("a selection problem needs at least one layer")
        metrics = layers[0].metrics
        for i, layer in enumerate(layers):
            if layer.metrics != metrics:
                raise ValueError(
                    f"layer {i} has costs {sorted(layer.metrics)}, expected {sorted(metrics)}"
                )
        fixed = {m: finite_number(v, f"fixed {m}") for m, v in dict(self.fixed_costs).items()}
        unknown = set(fixed) - metrics
        if unknown:
            raise ValueError(f"fixed costs for metrics no option has: {sorted(unknown)}")
        object.__setattr__(self, "fixed_costs", fixed)

    # --- shape ---------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def is_joint(self) -> bool:
        return any(layer.is_joint for layer in self.layers)

    @property
    def metrics(self) -> tuple[str, ...]:
        """Cost metrics of this problem, in ``COST_METRICS`` order (then any others, sorted)."""
        have = self.layers[0].metrics
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
        return self.fixed(metric) + sum(
            layer.pair_cost(a, f, metric)
            for layer, (a, f) in zip(self.layers, indices, strict=True)
        )

    def costs(self, indices: Indices) -> dict[str, float]:
        return {m: self.cost(indices, m) for m in self.metrics}

    def score(self, indices: Indices) -> float:
        """Predicted quality loss of a choice: the sum of its pairs' scores."""
        return sum(
            layer.pair_score(a, f) for layer, (a, f) in zip(self.layers, indices, strict=True)
        )

    def min_cost(self, metric: str) -> float:
        """The exact smallest achievable cost: each layer at its cheapest pair."""
        self._check_metric(metric)
        return self.fixed(metric) + sum(layer.min_cost(metric) for layer in self.layers)

    def max_cost(self, metric: str) -> float:
        """The exact largest achievable cost (what a lower bound is checked against)."""
        self._check_metric(metric)
        return self.fixed(metric) + sum(layer.min_cost(metric, True) for layer in self.layers)

    # --- names <-> indices ---------------------------------------------------------------------
    def names(self, indices: Indices) -> Choices:
        return tuple(
            (layer.attention[a].variant, layer.ffn[f].variant)
            for layer, (a, f) in zip(self.layers, indices, strict=True)
        )

    def indices(self, choices: Sequence[Sequence[str]]) -> Indices:
        """Inverse of ``names``; raises ``SelectionError`` naming an unknown variant or a pair a
        joint layer does not list."""
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
            layer.block(idx[0], idx[1])
            out.append((idx[0], idx[1]))
        return tuple(out)

    def parent_indices(self) -> Indices:
        """The parent's choice: ``attention:parent`` + ``ffn:parent`` in every layer; for a
        library without those names, each layer's first pair (block libraries list the parent's
        block first)."""
        out = []
        for layer in self.layers:
            names = ([o.variant for o in layer.attention], [o.variant for o in layer.ffn])
            if PARENT[0] in names[0] and PARENT[1] in names[1]:
                out.append((names[0].index(PARENT[0]), names[1].index(PARENT[1])))
            else:
                out.append(layer.pairs()[0])
        return tuple(out)

    # --- per-layer rules -----------------------------------------------------------------------
    def restrict(
        self,
        fix: Mapping[int, Sequence[str]] | None = None,
        forbid: Iterable[tuple[int | None, str]] = (),
    ) -> SelectionProblem:
        """The same problem with fewer options: ``fix[layer]`` names the variants that layer must
        use (an attention and/or an FFN variant); ``forbid`` lists ``(layer or None for every
        layer, variant)`` that must not be chosen. Joint layers keep the blocks of the remaining
        options. Raises ``SelectionError`` for an unknown layer or variant, or a layer left with
        nothing to choose."""
        keep = [{k: [o.variant for o in layer.options(k)] for k in KINDS} for layer in self.layers]
        rules = [(i, name, True) for i, names in (fix or {}).items() for name in names]
        rules += [(i, name, False) for i, name in forbid]
        for i, name, fixed in rules:
            targets = range(self.num_layers) if i is None else [int(i)]
            if i is not None and not 0 <= int(i) < self.num_layers:
                raise SelectionError(f"layer {i} out of range (the model has {self.num_layers})")
            hits = 0
            for j in targets:
                for kind in KINDS:
                    if name in keep[j][kind]:
                        keep[j][kind] = [name] if fixed else [n for n in keep[j][kind] if n != name]
                        hits += 1
            if not hits:
                raise SelectionError(
                    f"no variant {name!r} to {'fix' if fixed else 'forbid'} "
                    f"in {'any layer' if i is None else f'layer {i}'}"
                )
        return SelectionProblem(
            tuple(
                _keep(layer, names, i)
                for i, (layer, names) in enumerate(zip(self.layers, keep, strict=True))
            ),
            dict(self.fixed_costs),
        )

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


def _keep(layer: LayerOptions, names: Mapping[str, list[str]], i: int) -> LayerOptions:
    kept = {k: [o for o in layer.options(k) if o.variant in names[k]] for k in KINDS}
    if not kept["attention"] or not kept["ffn"]:
        raise SelectionError(f"the rules leave layer {i} without an attention or FFN option")
    if not layer.blocks:
        return LayerOptions(tuple(kept["attention"]), tuple(kept["ffn"]))
    where = {k: {o.variant: n for n, o in enumerate(kept[k])} for k in KINDS}
    blocks = []
    for b in layer.blocks:
        a, f = layer.attention[b.attention].variant, layer.ffn[b.ffn].variant
        if a in where["attention"] and f in where["ffn"]:
            blocks.append(Block(where["attention"][a], where["ffn"][f], b.score, b.costs))
    if not blocks:
        raise SelectionError(f"the rules leave layer {i} without a joint block")
    used = {k: sorted({getattr(b, k) for b in blocks}) for k in KINDS}
    remap = {k: {old: new for new, old in enumerate(used[k])} for k in KINDS}
    return LayerOptions(
        tuple(kept["attention"][n] for n in used["attention"]),
        tuple(kept["ffn"][n] for n in used["ffn"]),
        tuple(
            Block(remap["attention"][b.attention], remap["ffn"][b.ffn], b.score, b.costs)
            for b in blocks
        ),
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
