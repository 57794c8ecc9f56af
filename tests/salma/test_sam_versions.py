"""SAM-2.0 and SAM-2.1, Hiera T/S/B+/L, chosen by config (``sam.version``, ``sam.hiera``)."""

from __future__ import annotations

import pytest

from salma.config import HIERA_SIZES, SAM_VERSIONS, SamConfig, parse_sam_package_config, resolve_model_config
from salma.sam_adapter import sam2_state_shapes


@pytest.mark.parametrize("version", SAM_VERSIONS)
@pytest.mark.parametrize("hiera", list(HIERA_SIZES))
def test_every_version_and_size_names_a_config_of_the_package(version, hiera):
    from importlib.resources import files

    name = SamConfig(version=version, hiera=hiera).config_name
    assert (files("sam2") / name).is_file(), name
    assert parse_sam_package_config(name) == (version, hiera)


def test_sam_2_1_adds_what_sam_2_0_lacks():
    """Why a SAM-2.0 checkpoint (Sa2VA's, the public SALMA code's) needs sam.version "2.0": the
    2.1 configs add three tensors (package configs: no_obj_embed_spatial, proj_tpos_enc_in_obj_ptrs)."""
    shapes = {
        v: sam2_state_shapes(config_name=SamConfig(version=v, hiera="tiny").config_name, overrides=[], image_size=1024)
        for v in SAM_VERSIONS
    }
    assert set(shapes["2.1"]) - set(shapes["2.0"]) == {"no_obj_embed_spatial", "obj_ptr_tpos_proj.weight", "obj_ptr_tpos_proj.bias"}
    assert set(shapes["2.0"]) <= set(shapes["2.1"])


def test_the_1b_preset_defaults_to_sam_2_1_large_and_2_0_is_a_field_away():
    assert resolve_model_config({"preset": "salma-1b"}).sam.config_name == "configs/sam2.1/sam2.1_hiera_l.yaml"
    config = resolve_model_config({"preset": "salma-1b", "sam": {"version": 2.0}})  # YAML's unquoted 2.0
    assert config.sam.config_name == "configs/sam2/sam2_hiera_l.yaml"


def test_configs_that_name_the_package_config_still_load():
    config = SamConfig.model_validate({"config_name": "configs/sam2/sam2_hiera_b+.yaml"})
    assert (config.version, config.hiera) == ("2.0", "base_plus")
    with pytest.raises(ValueError, match="not one of the sam2 package's model configs"):
        SamConfig.model_validate({"config_name": "configs/sam3/sam3.yaml"})


def test_the_input_size_is_a_field_not_an_override():
    with pytest.raises(ValueError, match="set sam.image_size instead"):
        SamConfig(overrides=["++model.image_size=512"])
