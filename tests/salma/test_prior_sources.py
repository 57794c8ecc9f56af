"""``mba.prior``: learned, uniform, oracle and shuffled priors, and the old ``use_prior`` key."""

import pytest
import torch
from pydantic import ValidationError

from salma.builder import build_salma
from salma.config import MBAConfig
from salma.model import ORACLE_LOGIT, shuffled_frames
from salma.testing import random_batch, tiny_salma_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_salma(tiny_salma_config()).model.eval()


@pytest.fixture(scope="module")
def features(model):
    batch = random_batch(tiny_salma_config(), batch_size=3, num_frames=2)
    with torch.no_grad():
        return batch, model.encode_frames(batch.sam_pixel_values)


def test_config_reads_use_prior_and_rejects_a_contradiction():
    assert MBAConfig(use_prior=False).prior == "uniform"
    assert MBAConfig(use_prior=True).prior == "learned"
    assert MBAConfig(use_prior=True, prior="oracle").prior == "oracle"
    with pytest.raises(ValidationError, match="keep mba.prior only"):
        MBAConfig(use_prior=False, prior="oracle")
    with pytest.raises(ValidationError):
        MBAConfig(prior="random")


def test_learned_and_uniform(model, features):
    batch, feats = features
    model.prior_source = "learned"
    learned = model.frame_priors(feats)
    assert torch.equal(learned, model.sam.prior(feats)) and learned.abs().sum() > 0
    model.prior_source = "uniform"
    uniform = model.frame_priors(feats)
    assert uniform.shape == learned.shape and not uniform.any()


def test_oracle_is_the_object_union_as_signed_logits(model, features):
    batch, feats = features
    f, s = batch.sam_pixel_values.shape[0], batch.sam_pixel_values.shape[-1]
    objects = torch.zeros(f, s, s, dtype=torch.bool)
    objects[:, :, : s // 2] = True  # the left half of every frame
    objects[0, : s // 8, s // 2 : s // 2 + s // 8] = True  # one full cell more on frame 0 (8 x 8 map)
    model.prior_source = "oracle"
    prior = model.frame_priors(feats, object_masks=objects)
    h, w = prior.shape[-2:]
    assert (h, w) == (8, 8)
    assert torch.all(prior[:, 0, :, : w // 2] == ORACLE_LOGIT)
    assert prior[0, 0, 0, w // 2] == ORACLE_LOGIT and prior[1, 0, 0, w // 2] == -ORACLE_LOGIT
    assert torch.all(prior[:, 0, 1:, w // 2 + 1 :] == -ORACLE_LOGIT)
    half = objects.clone()
    half[:, :, s // 2 : s // 2 + s // 16] = True  # half of the next column of cells
    covered = model.frame_priors(feats, object_masks=half)
    assert torch.allclose(covered[1, 0, :, w // 2], torch.zeros(h))  # half covered: logit 0
    with pytest.raises(ValueError, match="mba.prior=oracle needs every object's mask"):
        model.frame_priors(feats)


def test_shuffled_takes_another_samples_prior(model, features):
    index = torch.tensor([0, 0, 1, 1, 1, 2])
    assert shuffled_frames(index, 6).tolist() == [2, 3, 5, 5, 5, 0]
    batch, feats = features
    model.prior_source = "shuffled"
    shuffled = model.frame_priors(feats, frame_sample_index=batch.frame_sample_index)
    learned = model.sam.prior(feats)
    # three samples of two frames: sample b's frames take sample b + 1's
    assert torch.equal(shuffled, learned[torch.tensor([2, 3, 4, 5, 0, 1])])
    one = model.frame_priors(feats)  # no sample index (a single sample): rotated by 180 degrees
    assert torch.equal(one, torch.flip(learned, dims=(-2, -1)))


def test_oracle_trains_through_the_forward(model):
    model.prior_source = "oracle"
    batch = random_batch(tiny_salma_config(), batch_size=2, num_frames=1)
    f, s = batch.sam_pixel_values.shape[0], batch.sam_pixel_values.shape[-1]
    batch.frame_object_masks = torch.zeros(f, s, s, dtype=torch.bool)
    batch.frame_object_masks[:, 16:80, 16:80] = True
    out = model(batch)
    assert torch.isfinite(out["total"])
    model.prior_source = "learned"


def test_arms_share_their_initialisation():
    """Sweep arms are paired: with the same seed, MBA on or off leaves every shared weight equal."""
    with_mba = build_salma(tiny_salma_config()).model.state_dict()
    config = tiny_salma_config()
    baseline_config = config.model_copy(update={"mba": config.mba.model_copy(update={"enabled": False})})
    baseline = build_salma(baseline_config).model.state_dict()
    shared = set(with_mba) & set(baseline)
    assert len(shared) == len(baseline) and any(k.startswith("mba.") for k in with_mba)
    assert all(torch.equal(with_mba[k], baseline[k]) for k in shared)
