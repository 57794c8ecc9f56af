"""Exports as hub model folders: ``config.json`` at the root, weights in the training dtype, a
model card; ``SalmaPredictor.from_pretrained`` takes a hub id (here from a local hub cache,
offline) as well as a path, and never runs code from the folder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from salma.builder import build_salma
from salma.checkpoint_layout import stored_tensors
from salma.export import export_model, load_exported
from salma.predictor import SalmaPredictor
from salma.release_replicas import REMOTE_CODE_MARKER
from salma.testing import tiny_salma_config

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    built = build_salma(tiny_salma_config())
    out = export_model(built, tmp_path_factory.mktemp("hub") / "salma-tiny", dtype=torch.bfloat16,
                       scores={"eval/refcoco_val/ciou": 61.25, "eval/mevis_valid_u/jf": 40.5},
                       source="A test export.")  # fmt: skip
    return built.model, out


def _hub_cache(cache, repo_id: str, folder) -> None:
    """The layout huggingface_hub's cache has after a download: models--<owner>--<name>/refs/main
    naming a commit, snapshots/<commit>/ holding the files."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, storage / "snapshots" / COMMIT)
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)


def test_the_export_is_a_hub_folder_in_the_training_dtype(exported):
    model, out = exported
    document = json.loads((out / "config.json").read_text())
    assert document["model_type"] == "salma" and document["dtype"] == "bfloat16"
    assert document["salma"]["mllm"]["path"] == "mllm" and document["salma"]["lora"]["enabled"] is False
    assert {s.dtype for s in stored_tensors(out / "mllm").values()} == {torch.bfloat16}
    assert {v.dtype for v in load_file(str(out / "salma.safetensors")).values() if v.is_floating_point()} == {torch.bfloat16}
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: salma")
    assert "| refcoco_val | ciou | 61.25 |" in card and "| mevis_valid_u | jf | 40.50 |" in card
    assert '"mba": {' in card and "A test export." in card
    reloaded = load_exported(out)
    own = reloaded.model.state_dict()
    for key, value in model.state_dict().items():  # the in-memory model is untouched by the export
        assert torch.equal(own[key], value.to(torch.bfloat16).to(value.dtype)), key
    assert next(model.parameters()).dtype == torch.float32


def test_from_pretrained_takes_a_hub_id_from_the_local_cache(exported, tmp_path, monkeypatch):
    _, out = exported
    _hub_cache(tmp_path / "cache", "acme/salma-tiny", out)
    image = np.random.default_rng(0).integers(0, 255, (40, 52, 3), dtype=np.uint8)
    by_path = SalmaPredictor.from_pretrained(str(out)).segment(image, "the red circle", generate=False)
    by_id = SalmaPredictor.from_pretrained("acme/salma-tiny", cache_dir=str(tmp_path / "cache"), local_files_only=True)
    assert np.array_equal(by_id.segment(image, "the red circle", generate=False).masks[0], by_path.masks[0])
    # HF_HUB_OFFLINE=1 instead of local_files_only.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert SalmaPredictor.from_pretrained("acme/salma-tiny", cache_dir=str(tmp_path / "cache")).model is not None
    with pytest.raises(FileNotFoundError, match="acme/absent"):
        SalmaPredictor.from_pretrained("acme/absent", cache_dir=str(tmp_path / "cache"), local_files_only=True)


def test_a_folder_asking_for_remote_code_is_refused_and_its_code_never_runs(exported, tmp_path):
    _, out = exported
    folder = tmp_path / "hostile"
    shutil.copytree(out, folder)
    marker = folder / "mllm" / REMOTE_CODE_MARKER
    (folder / "mllm" / "tokenization_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config_path = folder / "mllm" / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config.update(tokenizer_class="EvilTokenizer",
                            auto_map={"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]})  # fmt: skip
    config_path.write_text(json.dumps(tokenizer_config))
    with pytest.raises(ValueError, match="asks for remote code"):
        SalmaPredictor.from_pretrained(str(folder))
    assert not marker.exists()


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d.update(model_type="internvl"), "not an exported SALMA model"),
        (lambda d: d["salma"]["mllm"].update(path="../elsewhere"), "must be 'mllm'"),
        (lambda d: d["salma"]["sam"].update(checkpoint="/tmp/sam.pt"), "carries its own weights"),
    ],
)
def test_an_export_config_cannot_point_outside_its_folder(exported, tmp_path, edit, match):
    _, out = exported
    folder = tmp_path / "edited"
    shutil.copytree(out, folder)
    document = json.loads((folder / "config.json").read_text())
    edit(document)
    (folder / "config.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match=match):
        load_exported(folder)


def test_an_export_written_before_config_json_still_loads(exported, tmp_path):
    _, out = exported
    folder = tmp_path / "legacy"
    shutil.copytree(out, folder)
    document = json.loads((folder / "config.json").read_text())
    (folder / "config.json").unlink()
    (folder / "salma_config.json").write_text(json.dumps(document["salma"]))
    assert load_exported(folder).config.mllm.path.endswith("mllm")
