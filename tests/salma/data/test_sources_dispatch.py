import subprocess
import sys

import pytest

from data_fixture_writers import (
    write_chatunivi,
    write_gcg,
    write_mevis_split,
    write_ref_davis_pkl,
    write_ref_sav,
    write_refcoco_by_hand,
    write_revos,
)
from salma.data import BUILTIN_FORMATS, read_source, source_format
from salma.data.errors import DatasetFormatError
from salma.data.formats import splits_matching
from salma.data.sources import split_note
from salma.testing import write_own_data_example


def test_builtin_formats_and_what_each_declares():
    assert BUILTIN_FORMATS == (
        "refcoco", "mevis", "revos", "ref_youtube_vos", "ref_davis17", "ref_sav", "llava", "chatunivi", "gcg",
        "own_data",
    )
    declared = {name: (source_format(name).media, source_format(name).scoring) for name in BUILTIN_FORMATS}
    assert declared == {
        "refcoco": ("image", "image"), "mevis": ("video", "video"), "revos": ("video", "revos"),
        "ref_youtube_vos": ("video", "video"), "ref_davis17": ("video", "video"), "ref_sav": ("video", "video"),
        "llava": ("conversation", None), "chatunivi": ("conversation", None), "gcg": ("conversation", None),
        "own_data": ("mixed", "own"),
    }


def _case(fmt, tmp_path, manifest):
    """(root, split, options) of a readable source of each format."""
    match fmt:
        case "refcoco":
            return write_refcoco_by_hand(tmp_path), "train", {}
        case "mevis":
            write_mevis_split(tmp_path / "train")
            return tmp_path, "train", {}
        case "revos":
            write_revos(tmp_path)
            return tmp_path, "valid", {}
        case "ref_youtube_vos":
            return manifest["datasets"]["ref_youtube_vos"]["root"], "train", {}
        case "ref_davis17":
            write_ref_davis_pkl(tmp_path, "valid")
            return tmp_path, "valid", {"masks": "mask_dict"}
        case "ref_sav":
            write_ref_sav(tmp_path)
            return tmp_path, "train", {"stride": 1}
        case "llava":
            return manifest["datasets"]["llava"]["root"], "val", {}
        case "chatunivi":
            write_chatunivi(tmp_path)
            return tmp_path, "train", {"video_folder": "Activity_Videos", "image_folder": "images"}
        case "gcg":
            write_gcg(tmp_path)
            return tmp_path, "train", {"layout": "grandf"}
        case "own_data":
            write_own_data_example(tmp_path, num_images=3, num_videos=1)
            return tmp_path, "train", {}
    raise AssertionError(fmt)


@pytest.mark.parametrize("fmt", BUILTIN_FORMATS)
def test_read_source_dispatches_every_format(fmt, tmp_path, manifest):
    root, split, options = _case(fmt, tmp_path, manifest)
    records = read_source(fmt, root, split, **options)
    assert records and all(r.split == split for r in records)
    for record in records:
        assert record.from_json(record.to_json()) == record  # JSON-serialisable for Ray Data


def test_read_source_rejects_unknown_formats_and_options(tmp_path):
    with pytest.raises(ValueError, match="unknown source format 'coco'.*refcoco"):
        read_source("coco", tmp_path, "train")
    with pytest.raises(TypeError):
        read_source("mevis", tmp_path, "train", no_such_option=1)


def test_data_package_never_imports_ray_mlflow_or_deepspeed():
    code = (
        "import importlib, pkgutil, sys, salma.data\n"
        "for m in pkgutil.iter_modules(salma.data.__path__): importlib.import_module('salma.data.' + m.name)\n"
        "bad = {'ray', 'mlflow', 'deepspeed'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("fmt", BUILTIN_FORMATS)
def test_each_format_lists_the_splits_of_its_folder(fmt, tmp_path, manifest):
    root, split, options = _case(fmt, tmp_path, manifest)
    found = source_format(fmt).splits(root, **options)
    if fmt == "ref_sav":  # one expression file whatever the split, unless expression_file names {split}
        assert found is None
        assert split_note(fmt, root, "nosuch", **options) == ""
        return
    assert split in found
    assert split_note(fmt, root, split, **options) == ""
    note = split_note(fmt, root, "nosuch", **options)
    assert note.startswith(f"; {fmt} splits in ") and note.endswith(", ".join(found))


@pytest.mark.parametrize("fmt", [f for f in BUILTIN_FORMATS if f not in ("refcoco", "ref_sav")])
def test_a_split_the_folder_lacks_is_named_with_the_ones_it_has(fmt, tmp_path, manifest):
    root, split, options = _case(fmt, tmp_path, manifest)
    with pytest.raises(DatasetFormatError, match=rf"file not found.*; {fmt} splits in .*\b{split}\b") as raised:
        read_source(fmt, root, "nosuch", **options)
    assert "nosuch" in raised.value.path


def test_refcoco_names_the_splits_of_its_refs_file(tmp_path):
    root = write_refcoco_by_hand(tmp_path)
    assert read_source("refcoco", root, "nosuch") == []  # the reader's contract: an absent split is empty
    assert split_note("refcoco", root, "nosuch") == f"; refcoco splits in {root.absolute()}: testA, train, val"
    assert split_note("refcoco", root, "nosuch", split_by="google") == ""  # no refs(google).p to list from


def test_splits_matching_reads_names_from_any_place_in_the_template(tmp_path):
    for name in ("a", "b_c"):
        (tmp_path / "meta" / name).mkdir(parents=True)
        (tmp_path / "meta" / name / f"{name}.json").write_text("[]")
    (tmp_path / "meta" / "odd").mkdir()
    (tmp_path / "meta" / "odd" / "other.json").write_text("[]")  # the name differs from its folder's
    assert splits_matching(tmp_path, "meta/{split}/{split}.json") == ["a", "b_c"]
    assert splits_matching(tmp_path, "meta/{split}") == ["a", "b_c", "odd"]
    assert splits_matching(tmp_path / "absent", "{split}.json") == []
    assert splits_matching(tmp_path, "all.json") is None
