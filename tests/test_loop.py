"""LOOP gold scores: one batched decoder pass with cross-attention projected once = Atlas's K passes."""

import pytest
import torch
from tiny_t5 import K, fid_inputs, tiny_t5

from atlas_fast import losses
from atlas_fast.reference.atlas import atlas_loop_score
from atlas_fast.t5_fid import patch_t5_for_fid
from atlas_fast.testing import assert_close


@pytest.mark.parametrize("passes_per_batch", [None, 2, 1])
@pytest.mark.parametrize("patched", [False, True])
def test_matches_atlas_loop_score(passes_per_batch, patched):
    model = tiny_t5().eval()
    encoder_outputs, mask, labels = fid_inputs(model)
    states = encoder_outputs.last_hidden_state
    with torch.no_grad():
        want = atlas_loop_score(model, states, mask.bool().view(mask.shape[0], K, -1), labels)
    if patched:
        patch_t5_for_fid(model, n_passages=K, collect_mass=False)
    got = losses.loop_gold_scores(model, states, mask, labels, K, passes_per_batch)
    assert got.shape == (2, K)
    assert_close(got, want)
    # The model is left as it was: its own projections are back in place.
    assert all(isinstance(block.layer[1].EncDecAttention.k, torch.nn.Linear) for block in model.decoder.block)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_passages": 4}, "n_passages must be a positive integer dividing"),
        ({"labels": torch.full((2, 4), -100)}, "no valid target token"),
        ({"passes_per_batch": 0}, "passes_per_batch must be"),
        ({"attention_mask": torch.ones(2, 5)}, r"attention_mask must have shape"),
    ],
)
def test_bad_input(kwargs, message):
    model = tiny_t5().eval()
    encoder_outputs, mask, labels = fid_inputs(model)
    arguments = {
        "model": model,
        "encoder_states": encoder_outputs.last_hidden_state,
        "attention_mask": mask,
        "labels": labels,
        "n_passages": K,
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        losses.loop_gold_scores(**arguments)
