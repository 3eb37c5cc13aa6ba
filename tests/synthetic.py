"""Synthetic selection problems of realistic shape: a test fixture (also used by
``bench/mip_speed.py``), pure.

Costs follow a simple roofline of a Llama-style layer on an H100-like device (decode is bound by
reading weights and KV cache, prefill by matmul FLOPs, plus a per-kernel overhead), and scores
grow as a variant gets cheaper, scaled by a layer sensitivity that is high in the first and last
layers (as replace-one-block KL is in practice), with multiplicative noise.
"""

from __future__ import annotations

import math
import random

from nas.selection.costs import (
    Block,
    LayerOptions,
    Option,
    SelectionProblem,
    kv_cache_mib,
    weights_mib,
)

# device and workload of the synthetic costs
BANDWIDTH_BPS = 3.3e12
FLOPS = 6.0e14
KERNEL_MS = 0.004
BYTES = 2.0


def llama_problem(
    num_layers: int = 80,
    *,
    hidden: int = 8192,
    heads: int = 64,
    kv_heads: int = 8,
    intermediate: int = 28672,
    vocab: int = 128256,
    attention: tuple[str, ...] = ("parent", "noop"),
    ffn_ratios: tuple[float, ...] = (0.75, 0.5, 0.375, 0.25, 0.125),
    ffn_extra: tuple[str, ...] = ("linear", "noop"),
    decode_batch: int = 64,
    context: int = 4096,
    prefill_tokens: int = 2048,
    seed: int = 0,
) -> SelectionProblem:
    """A Puzzle-scale problem (default: Llama-70B-like, 2 attention x 8 FFN options per layer).

    ``attention`` entries: ``parent``, ``noop``, ``linear`` or ``kv_heads=N``. Costs: prefill and
    decode latency (ms), params, memory (MiB, weights + KV cache at ``decode_batch`` x ``context``).
    """
    rng = random.Random(seed)
    head_dim = hidden // heads
    layers = []
    for layer in range(num_layers):
        sensitivity = (
            1.0
            + 6.0 * math.exp(-layer / 3.0)
            + 3.0 * math.exp(-(num_layers - 1 - layer) / 4.0)
            + 0.5 * rng.random()
        )
        attn = []
        for name in attention:
            kv = {"parent": kv_heads, "noop": 0, "linear": 0}.get(name)
            if kv is None:
                kv = int(name.split("=", 1)[1])
            if name == "noop":
                params, flops_tok, kv_bytes = 0.0, 0.0, 0.0
            elif name == "linear":
                params, flops_tok, kv_bytes = hidden * hidden, 2 * hidden * hidden, 0.0
            else:
                params = 2 * hidden * heads * head_dim + 2 * hidden * kv * head_dim
                flops_tok = 2 * params + 4 * heads * head_dim * prefill_tokens / 2
                kv_bytes = 2 * kv * head_dim * context * decode_batch * BYTES
            quality = {"parent": 0.0, "noop": 1.0, "linear": 0.7}.get(name)
            if quality is None:
                quality = 0.15 * (1.0 - kv / kv_heads) ** 0.7
            score = 0.0 if name == "parent" else 0.02 * sensitivity * quality * _noise(rng)
            attn.append(
                _option(
                    f"attention:{name}",
                    score,
                    params,
                    flops_tok,
                    kv_bytes,
                    kv,
                    head_dim,
                    decode_batch,
                    context,
                    prefill_tokens,
                )
            )
        ffn = [
            _ffn_option(
                "ffn:parent", 0.0, intermediate, hidden, decode_batch, prefill_tokens, context
            )
        ]
        for ratio in ffn_ratios:
            width = max(1, round(ratio * intermediate))
            score = 0.03 * sensitivity * (1.0 - ratio) ** 1.5 * _noise(rng)
            ffn.append(
                _ffn_option(
                    f"ffn:width={width}",
                    score,
                    width,
                    hidden,
                    decode_batch,
                    prefill_tokens,
                    context,
                )
            )
        for name in ffn_extra:
            score = 0.03 * sensitivity * (1.1 if name == "linear" else 1.25) * _noise(rng)
            if name == "linear":
                option = _option(
                    "ffn:linear",
                    score,
                    hidden * hidden,
                    2 * hidden * hidden,
                    0.0,
                    0,
                    head_dim,
                    decode_batch,
                    context,
                    prefill_tokens,
                )
            else:
                option = _option(
                    "ffn:noop", score, 0, 0, 0, 0, head_dim, decode_batch, context, prefill_tokens
                )
            ffn.append(option)
        layers.append(LayerOptions(tuple(attn), tuple(ffn)))
    embed = vocab * hidden
    fixed_params = 2.0 * embed + hidden
    fixed = {
        "prefill_latency_ms": _ms(2 * embed * prefill_tokens / FLOPS) + KERNEL_MS,
        "decode_latency_ms": _ms(fixed_params * BYTES / BANDWIDTH_BPS) + KERNEL_MS,
        "params": fixed_params,
        "memory_mib": weights_mib(fixed_params, BYTES),
        "kv_cache_mib": 0.0,
    }
    return SelectionProblem(tuple(layers), fixed)


def _noise(rng: random.Random) -> float:
    return math.exp(rng.gauss(0.0, 0.25))


def _ms(seconds: float) -> float:
    return 1000.0 * seconds


def _ffn_option(name, score, width, hidden, batch, prefill_tokens, context) -> Option:
    params = 3 * hidden * width
    return _option(name, score, params, 2 * params, 0.0, 0, 1, batch, context, prefill_tokens)


def _option(
    name, score, params, flops_tok, kv_bytes, kv, head_dim, batch, context, prefill_tokens
) -> Option:
    active = params > 0
    decode_s = (params * BYTES + kv_bytes) / BANDWIDTH_BPS + batch * flops_tok / FLOPS
    prefill_s = prefill_tokens * flops_tok / FLOPS
    return Option(
        name,
        score,
        {
            "prefill_latency_ms": _ms(prefill_s) + (KERNEL_MS if active else 0.0),
            "decode_latency_ms": _ms(decode_s) + (KERNEL_MS if active else 0.0),
            "params": float(params),
            "memory_mib": weights_mib(params, BYTES)
            + kv_cache_mib(kv, head_dim, context, batch, BYTES),
            "kv_cache_mib": kv_cache_mib(kv, head_dim, context, batch, BYTES),
        },
    )


def random_problem(
    rng: random.Random,
    num_layers: int,
    num_attention: int,
    num_ffn: int,
    shared_costs: bool = False,
) -> SelectionProblem:
    """A small random problem: option 0 of each kind is the parent (score 0, the largest costs);
    other options have random costs below the parent's and random positive scores. With
    ``shared_costs`` every layer has the same option costs (a homogeneous model), scores differ."""
    metrics = ("prefill_latency_ms", "decode_latency_ms", "params", "memory_mib")  # no KV cache
    layers = []
    shared: dict[tuple[str, int], dict[str, float]] = {}

    def draw(kind: str, v: int, parent: dict | None) -> dict[str, float]:
        if not shared_costs or (kind, v) not in shared:
            if parent is None:
                costs = {m: rng.uniform(5.0, 10.0) for m in metrics}
            else:
                costs = {m: parent[m] * rng.uniform(0.0, 1.0) for m in metrics}
            if not shared_costs:
                return costs
            shared[(kind, v)] = costs
        return dict(shared[(kind, v)])

    for _ in range(num_layers):
        kinds = []
        for kind, count in (("attention", num_attention), ("ffn", num_ffn)):
            parent = draw(kind, 0, None)
            options = [Option(f"{kind}:parent", 0.0, parent)]
            for v in range(1, count):
                costs = draw(kind, v, parent)
                name = f"attention:kv_heads={v}" if kind == "attention" else f"ffn:width={v}"
                options.append(Option(name, rng.uniform(0.01, 1.0), costs))
            kinds.append(tuple(options))
        layers.append(LayerOptions(*kinds))
    fixed = {m: rng.uniform(0.0, 3.0) for m in metrics}
    return SelectionProblem(tuple(layers), fixed)


def joint_problem(
    num_layers: int = 80,
    *,
    attention: tuple[str, ...] = ("parent", "noop"),
    seed: int = 0,
    **shape,
) -> tuple[SelectionProblem, SelectionProblem]:
    """A joint-block library whose joint scores are not additive, and its additive twin.

    Costs and subblock scores are ``llama_problem``'s (same arguments; default 80 layers x
    2 attention x 8 FFN = 16 joint blocks per layer). The joint score of block (a, f) is
    ``(score_a + score_f) * m`` with a per-block interaction factor ``m``:

    - whole-block no-op (attention and FFN both skipped, or attention skipped with FFN ``linear``
      whose output then only depends on the residual): ``m`` log-normal around 0.77 (sigma 0.35),
      clipped to [0.09, 1.10], as replace-one-block KL of real libraries tends to be: skipping a
      whole block hurts less than skipping its two halves one at a time;
    - attention skipped with a reduced FFN of width ratio ``r``: ``m`` moves from 1 towards the
      layer's no-op factor in proportion to ``1 - r`` (the less FFN is left, the stronger the
      interaction);
    - every other pair: ``m = exp(N(0, 0.05))`` (nearly additive).

    Returns ``(joint, additive)``: the same options and costs; ``joint`` lists every pair as a
    block with its joint score, ``additive`` scores pairs by the sums (what subblock scoring
    predicts). Deterministic in ``seed``.
    """
    additive = llama_problem(num_layers, attention=attention, seed=seed, **shape)
    rng = random.Random(seed + 7919)
    layers = []
    for layer in additive.layers:
        noop_factor = min(1.10, max(0.09, 0.77 * math.exp(rng.gauss(0.0, 0.35))))
        parent_width = float(shape.get("intermediate", 28672))
        blocks = []
        for a, f in layer.pairs():
            attn, ffn = layer.attention[a].variant, layer.ffn[f].variant
            if attn == "attention:noop" and ffn in ("ffn:noop", "ffn:linear"):
                factor = noop_factor
            elif attn == "attention:noop" and ffn != "ffn:parent":
                removed = 1.0 - _width(ffn) / parent_width
                factor = 1.0 - (1.0 - noop_factor) * removed
            else:
                factor = math.exp(rng.gauss(0.0, 0.05))
            score = layer.pair_score(a, f) * factor
            costs = {m: layer.pair_cost(a, f, m) for m in layer.metrics}
            blocks.append(Block(a, f, score, costs))
        layers.append(LayerOptions(layer.attention, layer.ffn, tuple(blocks)))
    return SelectionProblem(tuple(layers), dict(additive.fixed_costs)), additive


def _width(variant: str) -> float:
    """FFN width of ``ffn:width=N``."""
    return float(variant.split("=", 1)[1])


def random_joint_problem(
    rng: random.Random, num_layers: int, num_attention: int, num_ffn: int, keep: float = 0.7
) -> SelectionProblem:
    """``random_problem`` made joint: each layer lists the parent pair and a random ``keep``
    share of the other pairs, each with its own score: the pair's summed score times a factor in
    [0.3, 1.3], minus up to 0.05 (so some are negative, like an LM-loss delta below the parent)."""
    additive = random_problem(rng, num_layers, num_attention, num_ffn)
    layers = []
    for layer in additive.layers:
        blocks = []
        for a, f in layer.pairs():
            if (a, f) != (0, 0) and rng.random() > keep:
                continue
            score = 0.0 if (a, f) == (0, 0) else layer.pair_score(a, f) * rng.uniform(0.3, 1.3)
            score -= 0.0 if (a, f) == (0, 0) else rng.uniform(0.0, 0.05)
            costs = {m: layer.pair_cost(a, f, m) for m in layer.metrics}
            blocks.append(Block(a, f, score, costs))
        layers.append(LayerOptions(layer.attention, layer.ffn, tuple(blocks)))
    return SelectionProblem(tuple(layers), dict(additive.fixed_costs))
