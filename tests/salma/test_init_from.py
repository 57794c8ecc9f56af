"""``model.init_from``: start a model from an export; what may start fresh is an explicit,
logged list, everything else must match."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file

from salma.builder import build_salma
from salma.config import deep_update, resolve_model_config, tiny_config
from salma.export import INIT_FROM_MAY_START_FRESH, export_model, load_exported


def _config(init_from, **delta):
    tiny_sam = tiny_config().sam
    base = {
        "preset": "tiny",
        "init_from": str(init_from),
        "mllm": {"tokenizer": None, "tile_size": 56, "max_tiles": 2},
        "sam": {"version": "2.0", "hiera": "tiny", "image_size": 128, "overrides": tiny_sam.overrides},
    }
    return resolve_model_config(deep_update(base, delta))


def test_the_fresh_list_is_mba_and_the_expression_projector():
    assert INIT_FROM_MAY_START_FRESH == ("mba.", "expression_projector.")


def test_salma_starts_from_the_sa2va_baseline_with_mba_fresh_and_logged(sa2va_export, caplog):
    baseline = load_exported(sa2va_export).model
    with caplog.at_level(logging.INFO, logger="salma.export"):
        built = build_salma(_config(sa2va_export))
    own = built.model.state_dict()
    fresh = sorted(k for k in own if k.startswith(INIT_FROM_MAY_START_FRESH))
    assert fresh and any(k.startswith("mba.") for k in fresh) and any(k.startswith("expression_projector.") for k in fresh)
    message = next(r.getMessage() for r in caplog.records if "init_from" in r.getMessage())
    assert f"{len(fresh)} start fresh" in message and all(k in message for k in fresh)
    for key, value in baseline.state_dict().items():  # everything the baseline has, loaded
        assert torch.equal(own[key], value), key
    assert built.tokenizer.convert_tokens_to_ids("[SEG]") == 151674 == built.model.seg_token_id


def test_an_export_with_mba_does_not_load_into_a_model_without_it(sa2va_export, tmp_path):
    salma = build_salma(_config(sa2va_export))
    export_model(salma, tmp_path / "salma")
    assert any(k.startswith("mba.") for k in load_file(str(tmp_path / "salma" / "salma.safetensors")))
    with pytest.raises(ValueError, match=r"do not match the model: 0 missing .* unexpected"):
        build_salma(_config(tmp_path / "salma", mba={"enabled": False}))
    again = build_salma(_config(tmp_path / "salma"))  # the same configuration: nothing starts fresh
    assert all(torch.equal(again.model.state_dict()[k], v) for k, v in salma.model.state_dict().items())


def test_the_sam2_architecture_must_be_the_exports(sa2va_export):
    with pytest.raises(ValueError, match=r"sam.version: export '2.0', config '2.1'"):
        build_salma(_config(sa2va_export, sam={"version": "2.1"}))


def test_init_from_supplies_the_weights_so_paths_are_refused(sa2va_export):
    with pytest.raises(ValueError, match="set mllm.path to null"):
        _config(sa2va_export, mllm={"path": "checkpoints/InternVL2_5-1B-hf"})
    with pytest.raises(ValueError, match="sam.checkpoint"):
        _config(sa2va_export, sam={"checkpoint": "sam2_hiera_large.pt"})


def test_init_from_a_folder_that_is_not_an_export_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an exported SALMA model"):
        build_salma(_config(tmp_path))
