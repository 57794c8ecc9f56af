"""Driver-side SAM-2 pre-training: trained once, cached, retrained when stale, wired into the
model config; conflicts and bad records are clear errors."""

import json

import pytest

from pipelines.config import load_experiment
from pipelines.sam_pretrain import ensure_sam_pretrained
from pipelines.train import prepare_data


def _pretrain_cfg(tiny_experiment, folder, *overrides):
    return prepare_data(
        tiny_experiment(
            folder,
            "sam_pretrain.enabled=true",
            f"sam_pretrain.out={folder / 'sam2.pt'}",
            "sam_pretrain.steps=2",
            "sam_pretrain.batch_size=2",
            "sam_pretrain.prompts_per_image=2",
            *overrides,
        )
    )


def test_disabled_leaves_the_config_alone(tiny_experiment, tmp_path):
    cfg = tiny_experiment(tmp_path)
    assert ensure_sam_pretrained(cfg) is cfg


def test_pretrains_once_points_the_model_at_it_and_retrains_when_stale(tiny_experiment, tmp_path):
    cfg = _pretrain_cfg(tiny_experiment, tmp_path)
    checkpoint = tmp_path / "sam2.pt"
    assert cfg.model_config_resolved.sam.checkpoint == str(checkpoint)
    meta = json.loads((tmp_path / "sam2.pt.json").read_text())
    assert meta["trained_from"]["settings"]["steps"] == 2
    assert meta["masks"] > 0 and set(meta["train_prompt_iou"]) == {"click_iou", "box_iou"}
    written = checkpoint.stat().st_mtime_ns

    again = _pretrain_cfg(tiny_experiment, tmp_path)  # same settings, same data: reused
    assert checkpoint.stat().st_mtime_ns == written
    assert again.model_config_resolved.sam.checkpoint == str(checkpoint)

    _pretrain_cfg(tiny_experiment, tmp_path, "sam_pretrain.steps=3")  # other settings: trained again
    assert checkpoint.stat().st_mtime_ns != written
    assert json.loads((tmp_path / "sam2.pt.json").read_text())["trained_from"]["settings"]["steps"] == 3


def test_data_parallel_processes_write_a_checkpoint_that_loads(tiny_experiment, tmp_path):
    cfg = _pretrain_cfg(
        tiny_experiment, tmp_path, "sam_pretrain.processes=2", "sam_pretrain.threads=1", "sam_pretrain.batch_size=4"
    )
    meta = json.loads((tmp_path / "sam2.pt.json").read_text())
    assert meta["trained_from"]["settings"]["processes"] == 2
    assert meta["final"]["step"] == 2 and 0.0 <= meta["final"]["train_iou"] <= 1.0
    assert set(meta["train_prompt_iou"]) == {"click_iou", "box_iou"}
    from salma.builder import build_salma

    build_salma(cfg.model_config_resolved)  # the package's strict loader takes rank 0's weights


@pytest.mark.parametrize(
    "overrides",
    [("sam_pretrain.processes=0",), ("sam_pretrain.processes=2", "sam_pretrain.batch_size=6", "sam_pretrain.prompts_per_image=2"),
     ("sam_pretrain.processes=2", "sam_pretrain.video_steps=2", "sam_pretrain.clip_batch=3")],
)
def test_processes_must_split_the_batch(tiny_experiment, tmp_path, overrides):
    with pytest.raises(ValueError, match="processes"):
        tiny_experiment(tmp_path, "sam_pretrain.enabled=true", *overrides)


def test_a_trial_config_carrying_the_pretrained_checkpoint_still_validates(tiny_experiment, tmp_path):
    """What the workers receive: sam_pretrain enabled and model.sam.checkpoint = its output."""
    cfg = _pretrain_cfg(tiny_experiment, tmp_path)
    assert load_experiment(None, []).model_validate(cfg.model_dump()).model_config_resolved.sam.checkpoint


def test_another_checkpoint_beside_pretraining_is_an_error(tiny_experiment, tmp_path):
    with pytest.raises(ValueError, match="names another checkpoint"):
        tiny_experiment(tmp_path, "sam_pretrain.enabled=true", "model.sam.checkpoint=/elsewhere/sam2.pt")


def test_too_many_unreadable_records_stop_pretraining(tiny_experiment, tmp_path, synthetic_data):
    import shutil

    copy = tmp_path / "refer"
    shutil.copytree(synthetic_data / "refer", copy)
    images = sorted((copy / "images").rglob("*.jpg"))
    assert images
    for image in images[: len(images) // 2]:
        image.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="do not decode"):
        _pretrain_cfg(
            tiny_experiment, tmp_path, f"data.sources=[{{name: refcoco, format: refcoco, root: {copy / 'refcoco'}}}]"
        )


def test_video_steps_train_the_tracker_on_the_video_sources(tiny_experiment, tmp_path):
    _pretrain_cfg(
        tiny_experiment, tmp_path, "sam_pretrain.video_steps=2", "sam_pretrain.clip_batch=1", "sam_pretrain.clip_frames=3"
    )
    meta = json.loads((tmp_path / "sam2.pt.json").read_text())
    assert meta["trained_from"]["settings"]["video_steps"] == 2
    assert set(meta["final"]) >= {"object", "track_iou"}
    assert 0.0 <= meta["train_prompt_iou"]["track_iou"] <= 1.0


def test_video_steps_without_a_video_source_is_a_clear_error(tiny_experiment, tmp_path, synthetic_data):
    refcoco = synthetic_data / "refer" / "refcoco"
    with pytest.raises(ValueError, match="no video source"):
        _pretrain_cfg(
            tiny_experiment,
            tmp_path,
            "sam_pretrain.video_steps=2",
            f"data.sources=[{{name: refcoco, format: refcoco, root: {refcoco}}}]",
        )


@pytest.mark.parametrize("override", ["sam_pretrain.clip_frames=1", "sam_pretrain.video_steps=-1"])
def test_bad_video_settings_are_rejected(tiny_experiment, tmp_path, override):
    with pytest.raises(ValueError, match="clip_frames|video_steps"):
        tiny_experiment(tmp_path, "sam_pretrain.enabled=true", override)


def test_a_pretraining_left_on_its_plateau_is_named_for_the_prompt_types_it_trained():
    from pipelines.config import SamPretrainConfig
    from pipelines.sam_pretrain import plateau_warnings

    plateau = {"click_iou": 0.44, "box_iou": 0.45}
    mixed = plateau_warnings(plateau, SamPretrainConfig(enabled=True, steps=900))
    assert [w.split(" prompts")[0] for w in mixed] == ["the decoder does not follow click", "the decoder does not follow box"]
    assert "sam_pretrain.steps (now 900)" in mixed[0]
    # Boxes only: clicks were never trained, so their low IoU is no warning; a turned decoder none.
    assert plateau_warnings({"click_iou": 0.3, "box_iou": 0.78}, SamPretrainConfig(enabled=True, box_probability=1.0)) == []
    assert len(plateau_warnings({"click_iou": 0.3, "box_iou": 0.45}, SamPretrainConfig(enabled=True, box_probability=1.0))) == 1
