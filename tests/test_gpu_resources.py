"""GPUs through Ray resources: ``ray.gpus_per_task`` reaches the BLD task's options, and BLD
and the torch-cuda profile backend run on a GPU where there is one."""

from __future__ import annotations

import pytest
import torch

from nas.errors import SpecError
from nas.spec import parse_spec

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU; torch sees none on this machine"
)


def test_gpus_per_task_is_validated_and_reaches_the_bld_task_options():
    from nas.bld_stage import bld_task

    assert parse_spec({}).ray.gpus_per_task == 0
    cpu_only = bld_task(parse_spec({}))._default_options
    assert "num_gpus" not in cpu_only and cpu_only["num_cpus"] == 1
    half = bld_task(parse_spec({"ray": {"gpus_per_task": 0.5}}))._default_options
    assert half["num_gpus"] == 0.5 and half["num_cpus"] == 1 and half["max_retries"] >= 1
    for bad in (-1, "many"):
        with pytest.raises(SpecError, match="gpus_per_task"):
            parse_spec({"ray": {"gpus_per_task": bad}})


def test_torch_cuda_backend_is_selectable_from_the_spec():
    from compress.latency_backends import MeasureSettings, get_backend

    spec = parse_spec({"hardware": {"measure": {"backend": "torch-cuda", "precision": "bf16"}}})
    assert spec.hardware.measure.backend == "torch-cuda"
    if not torch.cuda.is_available():  # without a GPU: one line saying so, before any work
        from compress.errors import UserError

        with pytest.raises(UserError, match="needs a CUDA GPU"):
            get_backend(MeasureSettings(backend=spec.hardware.measure.backend))


@pytest.mark.gpu
@needs_cuda
def test_bld_on_cuda_matches_cpu(stories_parent, tiny_splits, tmp_path):
    from compress.bld import BLDConfig, train_variant
    from compress.capture import Activations, capture
    from compress.variants import VariantSpec

    capture(stories_parent.adapter, tiny_splits.train[:16], tmp_path / "train")
    capture(stories_parent.adapter, tiny_splits.eval[:4], tmp_path / "heldout")
    train, heldout = Activations(tmp_path / "train"), Activations(tmp_path / "heldout")
    config = BLDConfig(tokens=2048, batch_size=8, lr=3e-3, init_tokens=1024)
    spec, parent = VariantSpec("ffn", "width", 86), stories_parent.adapter.ffn(1)
    _, cpu = train_variant(spec, 1, parent, train, heldout, config)
    module, gpu = train_variant(spec, 1, parent, train, heldout, config, device="cuda")
    assert gpu["device"] == "cuda" and next(module.parameters()).device.type == "cpu"
    assert gpu["nmse_final"] < gpu["nmse_init"]
    assert gpu["nmse_final"] == pytest.approx(cpu["nmse_final"], rel=0.05)


@pytest.mark.gpu
@needs_cuda
def test_torch_cuda_profile_backend_measures(stories_parent):
    from compress.latency_backends import MeasureSettings, get_backend

    backend = get_backend(MeasureSettings(backend="torch-cuda", precision="bf16"))
    assert backend.name == "torch-cuda" and backend.device()
