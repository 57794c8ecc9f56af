"""Batch inference in process (``num_actors=0``): output layouts, resumption, refusals, bad
records. The Ray actor-pool run is in ``test_evaluate.py`` (end to end, compared with these
in-process predictions). The tiny model is exported with MBA switched on (γ = 0.5), so the drift
energies are not all zero."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines import infer as infer_module
from pipelines.config import EvalConfig
from pipelines.infer import infer, parse_dataset
from pipelines.prediction_folder import OutputFolderError, prediction_id, shard_key
from salma.data.masks import decode_rle
from salma.data.sources import read_source

FAST = EvalConfig(num_actors=0, generate=False, num_key_frames=3, visual_samples=1)


@pytest.fixture(scope="module")
def exported_model(tmp_path_factory) -> Path:
    import torch

    from salma.builder import build_salma
    from salma.export import export_model
    from salma.testing import tiny_salma_config

    built = build_salma(tiny_salma_config())
    with torch.no_grad():
        built.model.mba.gamma.fill_(0.5)
    return export_model(built, tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def mevis_run(exported_model, synthetic_data, tmp_path_factory):
    source = parse_dataset(f"mevis:{synthetic_data / 'mevis'}", split="drift")
    out = tmp_path_factory.mktemp("infer") / "mevis_drift"
    summary = infer(exported_model, source, out, settings=FAST)
    return source, out, summary


def test_parse_dataset_names_benchmarks_for_metric_names(tmp_path):
    source = parse_dataset(f"refcoco:{tmp_path}", split="testA", options={"dataset": "refcoco+"})
    assert (source.format, source.root, source.name) == ("refcoco", str(tmp_path.resolve()), "refcoco_plus_testA")
    assert parse_dataset(f"mevis:{tmp_path}", split="valid_u").name == "mevis_valid_u"
    for bad in ("mevis", f"nope:{tmp_path}", "mevis:"):
        with pytest.raises(ValueError, match="FORMAT:ROOT|unknown format"):
            parse_dataset(bad, split="val")


def test_video_results_and_png_layout(mevis_run):
    source, out, summary = mevis_run
    records = read_source("mevis", source.root, "drift")
    results = json.loads((out / "results.json").read_text())
    assert summary.predicted == len(records) and summary.resumed == 0 and summary.bad == 0
    assert set(results) == {r.sample_id for r in records}
    for record in records:
        names = [Path(f).stem for f in record.frames]
        for referent in record.referents:
            entry = results[record.sample_id][prediction_id(referent.ref_id, 0)]
            assert entry["expression"] == referent.expressions[0]
            assert len(entry["prediction_masks"]) == record.num_frames  # every frame predicted
            folder = out / "Annotations" / record.sample_id / referent.ref_id
            assert sorted(p.stem for p in folder.glob("*.png")) == sorted(names)
            for name, rle in zip(names, entry["prediction_masks"]):
                assert rle["size"] == [record.height, record.width]
                with Image.open(folder / f"{name}.png") as png:
                    assert png.mode == "L"  # single channel
                    pixels = np.asarray(png)
                assert set(np.unique(pixels)) <= {0, 255}
                assert np.array_equal(pixels == 255, decode_rle(rle))
    assert len(list((out / "visuals").glob("*.png"))) == 1
    assert not list(out.rglob("*.tmp"))
    diagnostics = json.loads((out / "diagnostics.json").read_text())
    assert all(d["drift"]["signal"] == "mba_energy" and d["drift"]["total"] > 0 for d in diagnostics)


def test_refcoco_results_have_one_entry_per_sentence(exported_model, synthetic_data, tmp_path):
    source = parse_dataset(f"refcoco:{synthetic_data / 'refer' / 'refcoco'}", split="val")
    infer(exported_model, source, tmp_path, settings=FAST)
    records = read_source("refcoco", source.root, "val")
    results = json.loads((tmp_path / "results.json").read_text())
    sentences = {(r.ref_id, i) for rec in records for r in rec.referents for i in range(len(r.expressions))}
    assert {(str(e["ref_id"]), e["sent_index"]) for e in results} == sentences  # ref ids as ints, as refs(*).p
    sizes = {(rec.height, rec.width) for rec in records}
    assert all(tuple(e["segmentation"]["size"]) in sizes and e["sent_id"] is not None for e in results)
    assert not (tmp_path / "Annotations").exists()


def test_rerun_skips_finished_records_and_redoes_broken_shards(mevis_run, tmp_path, monkeypatch):
    source, first, _ = mevis_run
    out = tmp_path / "copy"
    shutil.copytree(first, out)
    before = (out / "results.json").read_text()
    shards = sorted((out / "shards").glob("*.json"))
    shards[0].write_text(shards[0].read_text()[:40])  # truncated (a crash mid-write without os.replace)
    partial = json.loads(shards[1].read_text())
    partial["predictions"] = partial["predictions"][:-1]  # a sentence missing
    shards[1].write_text(json.dumps(partial))
    summary = infer(_model_of(first), source, out, settings=FAST)
    assert (summary.predicted, summary.resumed) == (2, summary.records - 2)
    assert (out / "results.json").read_text() == before  # same predictions, deterministic

    def no_model(*args, **kwargs):
        raise AssertionError("a finished run must not load the model again")

    monkeypatch.setattr(infer_module, "RecordPredictor", no_model)
    again = infer(_model_of(first), source, out, settings=FAST)
    assert (again.predicted, again.resumed) == (0, again.records)


def _model_of(out: Path) -> str:
    return json.loads((out / "run_info.json").read_text())["model"]


def test_a_folder_of_other_settings_is_refused(mevis_run, tmp_path):
    source, first, _ = mevis_run
    out = tmp_path / "copy"
    shutil.copytree(first, out)
    with pytest.raises(OutputFolderError, match="num_key_frames"):
        infer(_model_of(first), source, out, settings=FAST.model_copy(update={"num_key_frames": 2}))


def test_undecodable_record_is_reported_and_the_rest_written(exported_model, synthetic_data, tmp_path):
    root = tmp_path / "mevis"
    shutil.copytree(synthetic_data / "mevis" / "valid_u", root / "valid_u")
    records = read_source("mevis", root, "valid_u")
    broken = records[0]
    Path(broken.frames[1]).unlink()
    source = parse_dataset(f"mevis:{root}", split="valid_u", options={"check_files": False})
    with pytest.raises(infer_module.InferenceError, match="1 of 2 records could not be decoded"):
        infer(exported_model, source, tmp_path / "out", settings=FAST)
    bad = json.loads((tmp_path / "out" / "bad_records.json").read_text())
    assert [(b["sample_id"], b["reason"]) for b in bad] == [(broken.sample_id, "missing frame file")]
    assert (tmp_path / "out" / "shards" / f"{shard_key(records[1].sample_id)}.json").is_file()
    summary = infer(exported_model, source, tmp_path / "out", settings=FAST, max_bad_fraction=0.5)
    assert (summary.predicted, summary.resumed, summary.bad) == (0, 1, 1)
    assert set(json.loads((tmp_path / "out" / "results.json").read_text())) == {records[1].sample_id}


def test_a_training_checkpoint_gets_a_clear_error(tmp_path):
    (tmp_path / "salma_checkpoint.json").write_text("{}")
    with pytest.raises(ValueError, match="salma export --checkpoint"):
        infer_module.load_model(tmp_path)
    with pytest.raises(ValueError, match="not a folder and not a preset"):
        infer_module.load_model("no-such-model")



def test_ids_that_are_not_plain_names_are_skipped_listed_and_never_written(exported_model, synthetic_data, tmp_path):
    """An exp_id or video id of ``../..`` would become a folder outside --out: the reader skips
    it, bad_records.json names it, and --zip holds every expression that was predicted."""
    root = tmp_path / "data" / "mevis"
    shutil.copytree(synthetic_data / "mevis" / "valid_u", root / "valid_u")
    meta_path = root / "valid_u" / "meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    first, second = sorted(meta["videos"])
    expressions = meta["videos"][first]["expressions"]
    expressions["../../../escaped"] = expressions.pop(sorted(expressions)[0])
    meta["videos"]["..\\..\\escaped_video"] = meta["videos"].pop(second)
    meta_path.write_text(json.dumps(meta))
    out = tmp_path / "run" / "out"
    source = parse_dataset(f"mevis:{root}", split="valid_u")
    summary = infer(exported_model, source, out, settings=FAST, zip_annotations=True)
    assert not [p for p in tmp_path.rglob("*escaped*") if out not in p.parents and p.parent != root / "valid_u"]
    assert not list(out.rglob("*escaped*"))
    bad = json.loads((out / "bad_records.json").read_text())
    assert {(b["sample_id"], b["reason"], b["stage"]) for b in bad} == {
        (f"{first}/../../../escaped", "id is not a plain name", "index"),
        ("..\\..\\escaped_video", "id is not a plain name", "index"),
    }
    assert summary.skipped_at_index == 2 and summary.bad == 0
    import zipfile

    with zipfile.ZipFile(out / "submission.zip") as archive:
        zipped = {Path(name).parent.as_posix() for name in archive.namelist()}
    results = json.loads((out / "results.json").read_text())
    assert zipped == {f"{vid}/{exp}" for vid, exps in results.items() for exp in exps}
    assert len(zipped) == len(expressions) - 1  # the other expressions of the first video


def test_zip_refuses_to_leave_an_expression_out(mevis_run, tmp_path):
    from pipelines.prediction_folder import expected_annotation_folders, zip_submission

    source, first, _ = mevis_run
    out = tmp_path / "out"
    shutil.copytree(first, out)
    records = read_source("mevis", source.root, "drift")
    expected = expected_annotation_folders(records)
    shutil.rmtree(out / "Annotations" / sorted(expected)[0])
    with pytest.raises(OutputFolderError, match="1 expression"):
        zip_submission(out, "mevis", expected=expected)


def test_output_paths_refuse_ids_that_are_not_plain_names(tmp_path):
    from pipelines.prediction_folder import inside_out

    for bad in ("..", "../x", "a/b", "a\\b", "", "x\x00"):
        with pytest.raises(OutputFolderError, match="refusing to write"):
            inside_out(tmp_path, "video", bad)
    assert inside_out(tmp_path, "video", "0_1") == tmp_path / "video" / "0_1"


def test_batching_and_precision_flags_reach_the_actors_predictor(exported_model):
    import argparse

    import torch

    from pipelines.infer import RecordPredictor, settings_from_args

    args = argparse.Namespace(**{k: None for k in (
        "config", "num_actors", "cpus_per_actor", "gpu", "num_key_frames", "key_frame_sampling", "max_samples",
        "visual_samples", "max_new_tokens", "threads_per_actor", "records_per_batch", "compile_decoder")},
        teacher_force=False, expression_batch_size=3, dtype="bfloat16")
    settings = settings_from_args(args)
    assert (settings.expression_batch_size, settings.dtype, settings.records_per_batch) == (3, "bfloat16", 1)
    actor = RecordPredictor(model=str(exported_model), settings=settings.model_dump())
    assert actor.predictor.expression_batch_size == 3 and actor.predictor.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="records_per_batch"):
        EvalConfig(records_per_batch=0)


@pytest.mark.parametrize(("fmt", "folder", "split"), [("mevis", "mevis", "drift"), ("refcoco", "refer/refcoco", "val")])
def test_records_asked_together_write_what_records_asked_alone_write(exported_model, synthetic_data, tmp_path,
                                                                     fmt, folder, split):
    source = parse_dataset(f"{fmt}:{synthetic_data / folder}", split=split)
    alone = infer(exported_model, source, tmp_path / "alone", settings=FAST)
    together = infer(exported_model, source, tmp_path / "together",
                     settings=FAST.model_copy(update={"records_per_batch": 3}))
    assert alone.records == together.records >= 2
    assert (tmp_path / "together" / "results.json").read_text() == (tmp_path / "alone" / "results.json").read_text()
    assert sum(r["seconds"] for r in together.per_record) > 0


def test_several_sources_share_one_predictor_and_write_what_each_writes_alone(exported_model, synthetic_data,
                                                                             tmp_path, monkeypatch):
    sources = [parse_dataset(f"refcoco:{synthetic_data / 'refer' / 'refcoco'}", split="val"),
               parse_dataset(f"mevis:{synthetic_data / 'mevis'}", split="drift")]
    alone = [infer(exported_model, source, tmp_path / "alone" / source.name, settings=FAST) for source in sources]
    built = []
    original = infer_module.RecordPredictor

    def counting(**kwargs):
        built.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(infer_module, "RecordPredictor", counting)
    together = infer_module.infer_many(exported_model, [(s, tmp_path / "together" / s.name) for s in sources],
                                       settings=FAST)
    assert len(built) == 1  # one predictor (one model load) for both sources
    for source, one, both in zip(sources, alone, together, strict=True):
        assert (both.records, both.predicted, both.bad) == (one.records, one.predicted, 0)
        written = Path(both.results_path).read_text()
        assert written == Path(one.results_path).read_text() and json.loads(written), source.name
