"""The sequential least-squares refit (compress.refit) on stories260K."""

import pytest
import torch

from compress.evaluate import ParentLogits, evaluate
from compress.refit import RefitSettings, output_projection, refit_student
from compress.student import assemble_student

# stories260K: 5 layers; layer 0 untouched, so the walk starts diverging at layer 1
MIXED = [
    ["attention:parent", "ffn:parent"],
    ["attention:noop", "ffn:width=86"],
    ["attention:kv_heads=1", "ffn:parent"],
    ["attention:linear", "ffn:width=43"],
    ["attention:parent", "ffn:linear"],
]


def test_refit_brings_a_student_closer_on_held_out_tokens(stories_parent, tiny_splits):
    parent = stories_parent.adapter
    before_parent = {k: v.clone() for k, v in parent.state_dict().items()}
    student = assemble_student(parent, MIXED).eval()
    untouched = {k: v.clone() for k, v in student.layers[0].state_dict().items()}
    reference = ParentLogits(parent, tiny_splits.eval[:16])
    kl_before = evaluate(student, tiny_splits.eval[:16], reference).kl

    record = refit_student(student, parent, tiny_splits.train, RefitSettings(tokens=8192))

    kl_after = evaluate(student, tiny_splits.eval[:16], reference).kl
    assert kl_after < 0.8 * kl_before, (kl_before, kl_after)
    assert record["stream_nmse_after"] < record["stream_nmse_before"]
    assert record["tokens"] == 8192
    # layers 1-4 have 7 projections (the no-op attention has none); layer 0 is on the
    # parent's exact stream and stays as it was
    assert record["subblocks_refit"] == 7
    assert all(torch.equal(v, student.layers[0].state_dict()[k]) for k, v in untouched.items())
    assert all(torch.equal(before_parent[k], v) for k, v in parent.state_dict().items())


def test_refit_of_the_parent_itself_changes_nothing(stories_parent, tiny_splits):
    parent = stories_parent.adapter
    student = assemble_student(parent, [["attention:parent", "ffn:parent"]] * 5).eval()
    weights = {k: v.clone() for k, v in student.state_dict().items()}
    record = refit_student(student, parent, tiny_splits.train, RefitSettings(tokens=1024))
    assert record["subblocks_refit"] == 0 and record["stream_nmse_after"] == 0.0
    assert all(torch.equal(weights[k], v) for k, v in student.state_dict().items())


def test_output_projection_of_each_subblock_kind(stories_parent):
    student = assemble_student(stories_parent.adapter, MIXED)
    layer1, layer3 = student.layers[1], student.layers[3]
    assert output_projection(layer1.attention) is None  # no-op
    assert output_projection(layer1.ffn) is layer1.ffn.down_proj
    assert output_projection(student.layers[2].attention) is student.layers[2].attention.o_proj
    assert output_projection(layer3.attention) is layer3.attention.linear


def test_refit_refuses_bad_input(stories_parent):
    parent = stories_parent.adapter
    student = assemble_student(parent, MIXED)
    with pytest.raises(ValueError, match="non-empty"):
        refit_student(student, parent, torch.zeros(0, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="bad refit settings"):
        RefitSettings(tokens=0)
    shallow = assemble_student(parent, MIXED[:5])
    shallow.layers = shallow.layers[:3]
    with pytest.raises(ValueError, match="3 layers, its parent 5"):
        refit_student(shallow, parent, torch.zeros(2, 8, dtype=torch.long))
