"""Every kind of the hostile-data corpus (``hostile_corpus.py``) is handled cleanly: skipped and
counted as a bad record naming its file, or refused with an error naming the file or key."""

import pytest

from hostile_corpus import ALL_KINDS, attempt, prepare


@pytest.mark.parametrize("kind", ALL_KINDS, ids=[k.name for k in ALL_KINDS])
def test_hostile_input_is_handled_cleanly(kind, synthetic_dir, tmp_path):
    root = prepare(synthetic_dir, tmp_path)
    outcome, what = attempt(kind, root)
    assert outcome == "clean", f"{kind.name} ({kind.category}): {outcome}: {what}"


def test_allow_outside_root_admits_paths_outside_the_folder(synthetic_dir, tmp_path):
    """The reader option is the explicit way to keep images elsewhere (or symlinked per file)."""
    import json
    import shutil

    from salma.data.refcoco import read_refcoco

    root = prepare(synthetic_dir, tmp_path)
    instances_path = root / "refer" / "refcoco" / "instances.json"
    instances = json.loads(instances_path.read_text())
    image = instances["images"][0]
    folder = root / "refer" / "images" / "mscoco" / "images" / "train2014"
    elsewhere = tmp_path / "elsewhere.jpg"
    shutil.move(folder / image["file_name"], elsewhere)
    image["file_name"] = str(elsewhere)
    instances_path.write_text(json.dumps(instances))
    refused = []
    kept = read_refcoco(root / "refer" / "refcoco", "train", on_bad=refused.append)
    assert image["id"] not in {r.meta["image_id"] for r in kept}
    assert [e.reason for e in refused] == ["path outside the dataset root"]
    allowed = read_refcoco(root / "refer" / "refcoco", "train", allow_outside_root=True)
    [record] = [r for r in allowed if r.meta["image_id"] == image["id"]]
    assert record.frames == [str(elsewhere)]


def test_plain_names_and_confined_paths():
    from pathlib import Path

    from salma.data.confinement import OutsideRootError, confined_path, plain_name_problem

    assert plain_name_problem("00012") is None and plain_name_problem("a.b-c_d") is None
    for bad in ("", ".", "..", "a/b", "a\\b", "a\x00", "\udcff", 5, None):
        assert plain_name_problem(bad) is not None, bad
    folder = Path("/data/images")
    assert confined_path(folder, "train/x.jpg") == folder / "train" / "x.jpg"
    for bad in ("/etc/passwd", "../x.jpg", "a/../../x.jpg", "C:\\x.jpg", "..\\x.jpg", "", "a\x00b"):
        try:
            confined_path(folder, bad)
        except OutsideRootError:
            continue
        raise AssertionError(f"{bad!r} was not refused")
    assert confined_path(folder, "/elsewhere/x.jpg", allow_outside_root=True) == Path("/elsewhere/x.jpg")
