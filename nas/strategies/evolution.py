"""``diswot-evolution``: NSGA-II over homogeneous students, DisWOT up, predicted latency down.

A homogeneous student keeps ``depth`` of the parent's layers, and every kept layer uses the
same attention variant and the same FFN variant; dropped layers are ``noop``/``noop``. Which
layers a depth keeps comes from ``depth_masks`` (e.g. the AmoebaLLM DP's masks, True =
kept), else evenly spaced layers including the first and the last.

The search is Optuna's ``NSGAIISampler`` driven through Ray Tune's ``OptunaSearch``; every
trial builds its student untrained (calibration-initialised variants, the parent's own modules
where a choice is ``parent``) and reports the DisWOT score against the parent and the
predicted latency from ``latency(choices) -> ms`` (a plain picklable callable, e.g. a hardware
profile's predictor, or a parameter-count stand-in before profiles exist).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence

import torch

from compress.builders import build_variant
from compress.diswot import DiswotProbe, calibration_rows, subblock_init
from compress.model import BlockModel
from compress.scoring import ActivationCache
from compress.student import assemble_student
from compress.variants import VariantSpec
from nas.selection.dominance import non_dominated
from nas.strategies import DROPPED_LAYER, Choices, StrategyPoint

Latency = Callable[[Choices], float]


def space_options(variants: Sequence[VariantSpec]) -> tuple[list[str], list[str]]:
    """Homogeneous options of a space: the variants whose family says ``homogeneous`` (attention
    ``parent`` + KV-head counts, FFN ``parent`` + widths; ``linear`` and ``noop`` are left to
    depth and to the MIP)."""
    attention = [str(v) for v in variants if v.kind == "attention" and v.family.homogeneous]
    ffn = [str(v) for v in variants if v.kind == "ffn" and v.family.homogeneous]
    return attention, ffn


def kept_layers(
    num_layers: int, depth: int, depth_masks: Mapping[int, Sequence[bool]] | None = None
) -> tuple[int, ...]:
    """The layer indices a student of ``depth`` layers keeps.

    ``depth_masks`` maps layers removed -> mask (True = kept), e.g. from the depth DP.
    """
    if not 1 <= depth <= num_layers:
        raise ValueError(f"depth must be in 1..{num_layers}, got {depth}")
    removed = num_layers - depth
    if depth_masks is not None and removed in depth_masks:
        return tuple(i for i, keep in enumerate(depth_masks[removed]) if keep)
    if depth == 1:
        return (num_layers - 1,)
    step = (num_layers - 1) / (depth - 1)
    return tuple(sorted({round(i * step) for i in range(depth)}))


def homogeneous_choices(
    num_layers: int,
    depth: int,
    attention: str,
    ffn: str,
    depth_masks: Mapping[int, Sequence[bool]] | None = None,
) -> Choices:
    keep = set(kept_layers(num_layers, depth, depth_masks))
    return tuple((attention, ffn) if i in keep else DROPPED_LAYER for i in range(num_layers))


@torch.no_grad()
def build_student(
    parent: BlockModel,
    choices: Choices,
    cache: ActivationCache | None = None,
    init_rows: slice = slice(0, 32),
) -> BlockModel:
    """An untrained student sharing the parent's embeddings, head and ``parent`` subblocks.

    New variants are initialised from the parent's cached layer inputs (sequences
    ``init_rows`` of ``cache``) when given, data-free otherwise. Do not train the result: it
    shares tensors with the parent.
    """

    def load_module(index: int, spec: VariantSpec):
        init = None
        if cache is not None and spec.trainable:
            inputs = cache.layer_input(index, init_rows.start, init_rows.stop)
            init = subblock_init(parent, index, spec.kind, inputs)
        return build_variant(spec, parent.subblock(index, spec.kind), init)

    return assemble_student(parent, choices, load_module, share_parent=True).eval()


def evaluate_student(
    parent: BlockModel,
    calib_tokens: torch.Tensor,
    choices: Choices,
    latency: Latency,
    max_positions: int = 512,
    init_tokens: int = 4096,
) -> dict[str, float]:
    """DisWOT proxies of the untrained student and its predicted latency.

    ``calib_tokens`` (N, S) is split by ``compress.diswot.calibration_rows`` into probe rows
    and variant-initialisation rows.
    """
    n, seq_len = calib_tokens.shape
    probe_rows, init_rows = calibration_rows(n, seq_len, max_positions, init_tokens)
    cache = ActivationCache.build(parent, calib_tokens)
    probe = DiswotProbe(parent, cache, max_positions=max_positions, sequences=probe_rows)
    result = probe.score(build_student(parent, choices, cache, init_rows))
    return {
        "diswot": result.score,
        "relation": result.relation,
        "semantic": result.semantic,
        "predicted_latency_ms": float(latency(choices)),
    }


def _trial(config: dict, parent=None, calib_tokens=None, latency=None, depth_masks=None) -> None:
    from ray import tune

    choices = homogeneous_choices(
        parent.num_layers, config["depth"], config["attention"], config["ffn"], depth_masks
    )
    tune.report(evaluate_student(parent, calib_tokens, choices, latency))


def diswot_evolution(
    parent: BlockModel,
    calib_tokens: torch.Tensor,
    latency: Latency,
    depths: Sequence[int],
    attention_options: Sequence[str],
    ffn_options: Sequence[str],
    trials: int = 32,
    seed: int = 0,
    depth_masks: Mapping[int, Sequence[bool]] | None = None,
    max_concurrent: int = 2,
    population_size: int | None = None,
) -> list[StrategyPoint]:
    """Run the search on the current Ray (started locally if none); return its Pareto set.

    ``attention_options``/``ffn_options`` are canonical variant strings (``parent``, widths,
    KV-head counts). Returns the non-dominated trials (DisWOT vs. predicted latency), sorted by
    latency, each with metrics ``diswot``, ``relation``, ``semantic``, ``predicted_latency_ms``.
    """
    import optuna
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    for text in (*attention_options, *ffn_options):
        VariantSpec.parse(text)  # fail early on a bad option
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=max_concurrent, include_dashboard=False, log_to_driver=False)
        started = True
    storage = tempfile.mkdtemp(prefix="diswot-evolution-")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        sampler = optuna.samplers.NSGAIISampler(
            seed=seed, population_size=population_size or max(4, min(16, trials // 3))
        )
        search = OptunaSearch(
            metric=["diswot", "predicted_latency_ms"], mode=["max", "min"], sampler=sampler
        )
        trainable = tune.with_parameters(
            _trial,
            parent=parent,
            calib_tokens=calib_tokens,
            latency=latency,
            depth_masks=dict(depth_masks) if depth_masks else None,
        )
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space={
                "depth": tune.choice(sorted(set(depths))),
                "attention": tune.choice(list(attention_options)),
                "ffn": tune.choice(list(ffn_options)),
            },
            tune_config=tune.TuneConfig(
                search_alg=search,
                num_samples=trials,
                max_concurrent_trials=max_concurrent,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(storage_path=storage, verbose=0),
        )
        grid = tuner.fit()
        rows = []
        for result in grid:
            if result.error is not None or not result.metrics:
                continue
            config = result.config
            rows.append(
                {
                    "choices": homogeneous_choices(
                        parent.num_layers,
                        config["depth"],
                        config["attention"],
                        config["ffn"],
                        depth_masks,
                    ),
                    "depth": float(config["depth"]),
                    **{k: float(result.metrics[k]) for k in _METRICS},
                }
            )
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        if started:
            ray.shutdown()
    if not rows:
        raise RuntimeError("diswot-evolution: every trial failed (see the Ray logs)")
    unique = {row["choices"]: row for row in rows}
    front = non_dominated(  # DisWOT maximised, predicted latency minimised
        list(unique.values()), lambda r: (-r["diswot"], r["predicted_latency_ms"])
    )
    front.sort(key=lambda r: r["predicted_latency_ms"])
    return [
        StrategyPoint(
            "diswot-evolution", row["choices"], {k: v for k, v in row.items() if k != "choices"}
        )
        for row in front
    ]


_METRICS = ("diswot", "relation", "semantic", "predicted_latency_ms")


class ParamsLatency:
    """A stand-in latency (ms) before a hardware profile exists: subblock parameters / rate.

    Picklable, so Ray can ship it to trials. Replace with a profile's predictor when one is
    available; only its ordering of students matters to the search.
    """

    def __init__(self, shape, params_per_ms: float = 1e6):
        self.shape = shape
        self.params_per_ms = params_per_ms

    def __call__(self, choices: Choices) -> float:
        total = sum(VariantSpec.parse(t).params(self.shape) for pair in choices for t in pair)
        return total / self.params_per_ms
