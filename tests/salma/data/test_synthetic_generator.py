import json
import time
from pathlib import Path

import pytest

from pipelines.synth import main
from salma.data.synthetic import synthetic_image_scene, synthetic_video_scene, write_synthetic
from salma.data.synthetic_scenes import (
    COLORS,
    MOTION_PHRASE,
    POSITION_SUFFIX,
    SHAPES,
    Description,
    denoted,
    scene_facts,
)


def _files(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "manifest.json")
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    a = write_synthetic(tmp_path / "a", seed=3, num_images=6, num_videos=2)
    b = write_synthetic(tmp_path / "b", seed=3, num_images=6, num_videos=2)
    write_synthetic(tmp_path / "c", seed=4, num_images=6, num_videos=2)
    files_a, files_b, files_c = (_files(tmp_path / name) for name in "abc")
    assert files_a == files_b
    assert json.dumps(a).replace(str(tmp_path / "a"), "X") == json.dumps(b).replace(str(tmp_path / "b"), "X")
    assert files_a["refer/refcoco/instances.json"] != files_c["refer/refcoco/instances.json"]
    assert files_a["mevis/train/mask_dict.json"] != files_c["mevis/train/mask_dict.json"]


def test_manifest_lists_roots_formats_and_splits(manifest, synthetic_dir):
    assert json.loads((synthetic_dir / "manifest.json").read_text()) == manifest
    expected = {
        "refcoco": ("refcoco", "refer/refcoco", ["train", "val", "drift"]),
        "mevis": ("mevis", "mevis", ["train", "valid_u", "drift"]),
        "ref_youtube_vos": ("ref_youtube_vos", "ref_youtube_vos", ["train", "valid"]),
        "llava": ("llava", "llava", ["train", "val"]),
    }
    for name, (fmt, root, splits) in expected.items():
        info = manifest["datasets"][name]
        assert info["format"] == fmt and info["root"] == str(synthetic_dir / root) and info["splits"] == splits
    assert manifest["datasets"]["refcoco"]["counts"] == {"train": 12, "val": 2, "drift": 2}


def _parse(text: str) -> Description:
    """The inverse of Description.text, to check what a generated sentence says."""
    words = text.split()
    assert words[0] == "the", text
    i, fields = 1, {}
    if words[i] == "two":
        fields["plural"], i = True, i + 1
    if words[i] in ("big", "small"):
        fields["size"], i = words[i], i + 1
    if words[i] in POSITION_SUFFIX:
        fields["position"], i = words[i], i + 1
    if words[i] in COLORS:
        fields["color"], i = words[i], i + 1
    noun = words[i].removesuffix("s") if fields.get("plural") else words[i]
    assert noun in SHAPES + ("one",), text
    if noun != "one":
        fields["shape"] = noun
    rest = " ".join(words[i + 1:])
    for position, phrase in POSITION_SUFFIX.items():
        if rest.startswith(phrase):
            fields["position"], rest = position, rest[len(phrase):].strip()
    for motion, phrase in MOTION_PHRASE.items():
        if rest == phrase:
            fields["motion"], rest = motion, ""
    assert rest == "", text
    return Description(**fields)


def _check_unique(scene, targets):
    facts = scene_facts(scene)
    for object_ids, texts in targets:
        for text in texts:
            description = _parse(text)
            assert description.text() == text
            assert denoted(description, facts, scene.width, scene.height) == frozenset(object_ids), text
            if description.size is None and description.position is None:
                # no superlative: the attributes alone must pick out exactly the targets
                matching = {
                    o.object_id for o in scene.objects
                    if description.color in (None, o.color) and description.shape in (None, o.shape)
                    and description.motion in (None, o.motion)
                }
                assert matching == set(object_ids), text


@pytest.mark.parametrize("split", ["train", "val", "drift"])
def test_image_expressions_are_unique_in_their_scene(split):
    for index in range(25):
        scene, targets, _ = synthetic_image_scene(0, split, index)
        assert 96 <= scene.width <= 192 and 96 <= scene.height <= 192 and scene.width != scene.height
        assert 2 <= len(scene.objects) <= 5
        _check_unique(scene, targets)
        if split == "drift":
            (target,) = [ids[0] for ids, _ in targets]
            distractor = scene.objects[scene.distractor_of[target]]
            assert distractor.size > 1.5 * scene.objects[target].size


@pytest.mark.parametrize("split", ["train", "drift"])
def test_video_expressions_are_unique_and_objects_move_steadily(split):
    for index in range(15):
        scene, targets, _ = synthetic_video_scene("mevis", 0, split, index)
        assert 6 <= scene.num_frames <= 10
        _check_unique(scene, targets)
        for obj in scene.objects:
            path = [obj.center(t) for t in range(scene.num_frames)]
            steps = {(round(b[0] - a[0], 6), round(b[1] - a[1], 6)) for a, b in zip(path, path[1:])}
            assert len(steps) == 1  # constant velocity (zero for static objects)


def test_main_and_rerun_into_the_same_folder(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["--out", str(out), "--seed", "5", "--num-images", "3", "--num-videos", "2"]) == 0
    assert json.loads((out / "manifest.json").read_text())["seed"] == 5
    assert "refcoco: format=refcoco" in capsys.readouterr().out
    assert main(["--out", str(out), "--seed", "6", "--num-images", "3", "--num-videos", "2"]) == 0
    assert json.loads((out / "manifest.json").read_text())["seed"] == 6
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        write_synthetic(foreign, num_images=3, num_videos=2)


@pytest.mark.slow
def test_small_size_is_quick(tmp_path):
    started = time.perf_counter()
    manifest = write_synthetic(tmp_path / "small", seed=0, size="small")
    elapsed = time.perf_counter() - started
    assert manifest["datasets"]["refcoco"]["counts"] == {"train": 300, "val": 60, "drift": 60}
    assert manifest["datasets"]["mevis"]["counts"] == {"train": 60, "valid_u": 15, "drift": 15}
    assert elapsed < 60, f"small synthetic generation took {elapsed:.1f} s (budget ~20 s)"
