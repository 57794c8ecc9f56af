"""The hostile-data corpus: kinds of broken, malicious or misleading input, each built from a fresh
copy of the synthetic datasets (real on-disk formats) and run through the reader, pipeline step
or config loader it targets.

Each ``Kind`` says what handling it expects: a bad record with a given reason (skipped and
counted), or an error of a given type whose message names the file or key. ``attempt`` runs one
kind and classifies what happened:

- ``clean``: the expected bad record was reported (with a file), or the expected error was
  raised naming what it should;
- ``crash``: any other exception (a raw ``TypeError``, ``KeyError``, ...);
- ``other``: records were reported, but not with the expected reason (often an accident: a
  ``..`` path reported as a missing image because nothing is there);
- ``silent``: nothing was reported and no error raised: the bad input went through.

``tests/salma/data/test_hostile_corpus.py`` asserts every kind is ``clean``;
``benchmarks/hostile_corpus.py`` runs every kind in a child process (so that a segfault or an
exhausted memory limit counts as a crash instead of ending the count) and prints the totals.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salma.data.errors import BadRecordError, DatasetFormatError

Action = Callable[[Callable[[BadRecordError], None]], Any]


@dataclass(frozen=True)
class Kind:
    name: str
    category: str  # "crash", "silent", "traversal" (what the input did before), or "config"
    build: Callable[[Path], Action]  # mutate the copy at this root, return what to run
    expect: str  # a bad-record reason, or "error:<ExceptionName>:<text the message must hold>"


# --------------------------------------------------------------------------- editing helpers
def _json(path: Path, edit: Callable[[Any], Any]) -> None:
    data = json.loads(path.read_text())
    out = edit(data)
    path.write_text(json.dumps(data if out is None else out))


def _refs(root: Path, edit: Callable[[list], None]) -> None:
    path = root / "refer" / "refcoco" / "refs(unc).p"
    refs = pickle.loads(path.read_bytes())
    edit(refs)
    path.write_bytes(pickle.dumps(refs))


def _instances(root: Path, edit: Callable[[dict], None]) -> None:
    _json(root / "refer" / "refcoco" / "instances.json", edit)


def _first_train_ref(refs: list) -> dict:
    return next(r for r in refs if r["split"] == "train")


def _mevis_meta(root: Path, edit: Callable[[dict], None]) -> None:
    _json(root / "mevis" / "train" / "meta_expressions.json", lambda d: edit(d["videos"]))


def _first_video(videos: dict) -> tuple[str, dict]:
    vid = sorted(videos)[0]
    return vid, videos[vid]


def _first_expression(videos: dict) -> dict:
    _, video = _first_video(videos)
    return video["expressions"][sorted(video["expressions"])[0]]


def _rename_first_video(root: Path, new_id: str) -> None:
    def edit(videos):
        vid, video = _first_video(videos)
        videos[new_id] = videos.pop(vid)
    _mevis_meta(root, edit)


def _rename_first_expression(root: Path, new_id: str) -> None:
    def edit(videos):
        _, video = _first_video(videos)
        expressions = video["expressions"]
        first = sorted(expressions)[0]
        expressions[new_id] = expressions.pop(first)
    _mevis_meta(root, edit)


# --------------------------------------------------------------------------- readers
def read_refcoco_train(root: Path) -> Action:
    from salma.data.refcoco import read_refcoco
    return lambda on_bad: read_refcoco(root / "refer" / "refcoco", "train", on_bad=on_bad)


def read_mevis_train(root: Path) -> Action:
    from salma.data.mevis import read_mevis
    return lambda on_bad: read_mevis(root / "mevis", "train", on_bad=on_bad)


def read_llava_train(root: Path) -> Action:
    from salma.data.llava import read_llava
    return lambda on_bad: read_llava(root / "llava", "train", on_bad=on_bad)


def read_ryvos_train(root: Path) -> Action:
    from salma.data.ref_vos import read_ref_youtube_vos
    return lambda on_bad: read_ref_youtube_vos(root / "ref_youtube_vos", "train", on_bad=on_bad)


def read_own_train(root: Path) -> Action:
    from salma.data.own_data import read_own_data
    return lambda on_bad: read_own_data(root / "own", "train", on_bad=on_bad)


def training_mixture(root: Path, fmt: str, dataset: str) -> Action:
    """The training pipeline's index step (``pipelines.data.read_mixture``) on one source."""
    from pipelines.config import SourceConfig
    from pipelines.data import BadRecordLog, read_mixture
    source = SourceConfig(name=dataset, format=fmt, root=str(root / dataset), split="train")

    def run(on_bad):
        log = BadRecordLog()
        out = read_mixture([source], bad=log)
        for (path, reason), count in log.counts.items():
            for _ in range(count):
                on_bad(BadRecordError(path, reason))
        return out
    return run


def _own_data(root: Path, lines: list[dict]) -> None:
    """An own-data folder holding one synthetic RefCOCO image, and its JSON Lines file."""
    folder = root / "own"
    (folder / "photos").mkdir(parents=True)
    image = sorted((root / "refer" / "images" / "mscoco" / "images" / "train2014").iterdir())[0]
    shutil.copy(image, folder / "photos" / "a.jpg")
    (folder / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


# --------------------------------------------------------------------------- the kinds
def _polygon(value: float) -> Callable[[Path], Action]:
    def build(root):
        def edit(inst):
            inst["annotations"][0]["segmentation"] = [[0.0, 0.0, value, 0.0, value, 5.0, 0.0, 5.0]]
        _instances(root, edit)
        return read_refcoco_train(root)
    return build


def _image_field(field: str, value: Any, *, drop: bool = False) -> Callable[[Path], Action]:
    def build(root):
        def edit(inst):
            if drop:
                inst["images"][0].pop(field)
            else:
                inst["images"][0][field] = value
        _instances(root, edit)
        return read_refcoco_train(root)
    return build


def _sentences(value: Any) -> Callable[[Path], Action]:
    def build(root):
        _refs(root, lambda refs: _first_train_ref(refs).__setitem__("sentences", value))
        return read_refcoco_train(root)
    return build


def _sentence_text(text: str) -> Callable[[Path], Action]:
    def build(root):
        def edit(refs):
            ref = _first_train_ref(refs)
            ref["sentences"] = [{**ref["sentences"][0], "sent": text}]
        _refs(root, edit)
        return read_refcoco_train(root)
    return build


def _mask_entry(value: Any) -> Callable[[Path], Action]:
    def build(root):
        def edit(masks):
            key = sorted(masks, key=int)[0]
            masks[key][0] = value
        _json(root / "mevis" / "train" / "mask_dict.json", edit)
        return read_mevis_train(root)
    return build


def _mevis_expression(text: str) -> Callable[[Path], Action]:
    def build(root):
        _mevis_meta(root, lambda videos: _first_expression(videos).__setitem__("exp", text))
        return read_mevis_train(root)
    return build


def _video_folder_loop(root: Path) -> Action:
    frames = root / "mevis" / "train" / "JPEGImages"
    vid = sorted(p.name for p in frames.iterdir())[0]
    shutil.rmtree(frames / vid)
    os.symlink(frames / vid, frames / vid)  # a link to itself: ELOOP on every access
    return read_mevis_train(root)


def _video_folder_outside(root: Path) -> Action:
    frames = root / "mevis" / "train" / "JPEGImages"
    vid = sorted(p.name for p in frames.iterdir())[0]
    outside = root / "elsewhere"
    shutil.move(frames / vid, outside)
    os.symlink(outside, frames / vid)
    return read_mevis_train(root)


def _llava_answer(text: str) -> Callable[[Path], Action]:
    def build(root):
        _json(root / "llava" / "train.json", lambda entries: entries[0]["conversations"][1].__setitem__("value", text))
        return read_llava_train(root)
    return build


def _llava_image(value: Callable[[Path], str]) -> Callable[[Path], Action]:
    def build(root):
        target = value(root)
        _json(root / "llava" / "train.json", lambda entries: entries[0].__setitem__("image", target))
        return read_llava_train(root)
    return build


def _file_name(value: Callable[[Path], str]) -> Callable[[Path], Action]:
    def build(root):
        target = value(root)
        _instances(root, lambda inst: inst["images"][0].__setitem__("file_name", target))
        return read_refcoco_train(root)
    return build


def _file_name_symlink_outside(root: Path) -> Action:
    folder = root / "refer" / "images" / "mscoco" / "images" / "train2014"
    name = json.loads((root / "refer" / "refcoco" / "instances.json").read_text())["images"][0]["file_name"]
    outside = root / "elsewhere.jpg"
    shutil.move(folder / name, outside)
    os.symlink(outside, folder / name)
    return read_refcoco_train(root)


def _frame_name(name: str) -> Callable[[Path], Action]:
    def build(root):
        _mevis_meta(root, lambda videos: _first_video(videos)[1]["frames"].__setitem__(1, name))
        return read_mevis_train(root)
    return build


def _video_id(new_id: str) -> Callable[[Path], Action]:
    def build(root):
        _rename_first_video(root, new_id)
        return read_mevis_train(root)
    return build


def _exp_id(new_id: str) -> Callable[[Path], Action]:
    def build(root):
        _rename_first_expression(root, new_id)
        return read_mevis_train(root)
    return build


def _ryvos_video_id(new_id: str) -> Callable[[Path], Action]:
    def build(root):
        path = root / "ref_youtube_vos" / "meta_expressions" / "train" / "meta_expressions.json"

        def edit(data):
            videos = data["videos"]
            vid = sorted(videos)[0]
            videos[new_id] = videos.pop(vid)
        _json(path, edit)
        return read_ryvos_train(root)
    return build


def _duplicate_annotation(root: Path) -> Action:
    def edit(inst):
        first = inst["annotations"][0]
        other = next(a for a in inst["annotations"][1:] if a["id"] != first["id"])
        other["id"] = first["id"]
    _instances(root, edit)
    return read_refcoco_train(root)


def _duplicate_image(root: Path) -> Action:
    def edit(inst):
        inst["images"][1]["id"] = inst["images"][0]["id"]
    _instances(root, edit)
    return read_refcoco_train(root)


def _frame_twice(root: Path) -> Action:
    def edit(videos):
        frames = _first_video(videos)[1]["frames"]
        frames[2] = frames[1]
    _mevis_meta(root, edit)
    return read_mevis_train(root)


def _duplicate_key_text(root: Path, level: str) -> Action:
    """Rewrite meta_expressions.json with one key given twice (json.dumps cannot write that)."""
    path = root / "mevis" / "train" / "meta_expressions.json"
    videos = json.loads(path.read_text())["videos"]
    ids = sorted(videos)
    if level == "video":
        body = ", ".join(f"{json.dumps(v)}: {json.dumps(videos[v])}" for v in ids)
        body += f", {json.dumps(ids[0])}: {json.dumps(videos[ids[1]])}"
        path.write_text('{"videos": {' + body + "}}")
    else:
        video = videos[ids[0]]
        exps = video["expressions"]
        first = sorted(exps)[0]
        inner = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in exps.items())
        inner += f", {json.dumps(first)}: {json.dumps(exps[sorted(exps)[-1]])}"
        rest = {k: v for k, v in video.items() if k != "expressions"}
        video_text = json.dumps(rest)[:-1] + ', "expressions": {' + inner + "}}"
        others = ", ".join(f"{json.dumps(v)}: {json.dumps(videos[v])}" for v in ids[1:])
        path.write_text('{"videos": {' + f"{json.dumps(ids[0])}: {video_text}" + (", " + others if others else "") + "}}")
    return read_mevis_train(root)


def _polygon_outside_image(root: Path) -> Action:
    def edit(inst):
        image = inst["images"][0]
        w, h = image["width"], image["height"]
        ann = next(a for a in inst["annotations"] if a["image_id"] == image["id"])
        ann["segmentation"] = [[w + 5.0, h + 5.0, w + 9.0, h + 5.0, w + 9.0, h + 9.0]]
        _retarget_first_ref(root, ann["id"], image["id"])
    _instances(root, edit)
    return read_refcoco_train(root)


def _retarget_first_ref(root: Path, ann_id: Any, image_id: Any) -> None:
    def edit(refs):
        ref = _first_train_ref(refs)
        ref["ann_id"], ref["image_id"] = ann_id, image_id
    _refs(root, edit)


def _missing_mask_dict(root: Path) -> Action:
    (root / "mevis" / "train" / "mask_dict.json").unlink()
    return training_mixture(root, "mevis", "mevis")


def _missing_annotations(root: Path) -> Action:
    shutil.rmtree(root / "ref_youtube_vos" / "train" / "Annotations")
    return training_mixture(root, "ref_youtube_vos", "ref_youtube_vos")


def _own_line(line_of: Callable[[Path], dict]) -> Callable[[Path], Action]:
    def build(root):
        _own_data(root, [{"image": "photos/a.jpg", "expression": "fine"}, line_of(root)])
        return read_own_train(root)
    return build


def _own_symlink_outside(root: Path) -> Action:
    _own_data(root, [{"image": "photos/b.jpg", "expression": "the shape"}])
    outside = root / "elsewhere.jpg"
    shutil.copy(root / "own" / "photos" / "a.jpg", outside)
    os.symlink(outside, root / "own" / "photos" / "b.jpg")
    return read_own_train(root)


def _ref_sav_path(field: str, value: str) -> Callable[[Path], Action]:
    def build(root):
        from data_fixture_writers import write_ref_sav
        from salma.data.ref_sav import read_ref_sav
        folder = root / "ref_sav"
        write_ref_sav(folder)
        _json(folder / "Ref-SAV.json", lambda videos: next(iter(videos.values())).__setitem__(field, value))
        return lambda on_bad: read_ref_sav(folder, "train", on_bad=on_bad)
    return build


def _gcg_image(value: str) -> Callable[[Path], Action]:
    def build(root):
        from data_fixture_writers import write_gcg
        from salma.data.gcg import read_gcg
        folder = root / "gcg"
        write_gcg(folder)
        _json(folder / "GranDf_HA_GCG_train.json", lambda entries: entries[0].__setitem__("file_name", value))
        return lambda on_bad: read_gcg(folder, "train", layout="grandf", on_bad=on_bad)
    return build


def _chatunivi_video(value: str) -> Callable[[Path], Action]:
    def build(root):
        from data_fixture_writers import write_chatunivi
        from salma.data.chatunivi import read_chatunivi
        folder = root / "chatunivi"
        write_chatunivi(folder)
        _json(folder / "train.json", lambda entries: entries[0].__setitem__("video", value))
        return lambda on_bad: read_chatunivi(folder, "train", video_folder="Activity_Videos", on_bad=on_bad)
    return build


ZERO_WIDTH = "\u200b\u200c\u200d\ufeff"
LONE_SURROGATE = "the \udcff shape"

DATA_KINDS: list[Kind] = [
    # Crashes before: pycocotools, raw TypeErrors, the tokenizer.
    Kind("polygon_nan", "crash", _polygon(math.nan), "malformed polygon"),
    Kind("polygon_inf", "crash", _polygon(math.inf), "malformed polygon"),
    Kind("polygon_huge", "crash", _polygon(1e12), "malformed polygon"),
    Kind("image_height_missing", "crash", _image_field("height", None, drop=True), "invalid image size"),
    Kind("image_height_text", "crash", _image_field("height", "tall"), "invalid image size"),
    Kind("image_height_negative", "crash", _image_field("height", -5), "invalid image size"),
    Kind("image_width_bool", "crash", _image_field("width", True), "invalid image size"),
    Kind("image_width_huge", "crash", _image_field("width", 10**9), "invalid image size"),
    Kind("sentences_int", "crash", _sentences(5), "malformed entry"),
    Kind("sentences_string", "crash", _sentences("the left one"), "malformed entry"),
    Kind("mask_dict_entry_int", "crash", _mask_entry(7), "malformed mask RLE"),
    Kind("mask_dict_rle_without_counts", "crash", _mask_entry({"size": [4, 4]}), "malformed mask RLE"),
    Kind("video_folder_symlink_loop", "crash", _video_folder_loop, "path outside the dataset root"),
    Kind("expression_lone_surrogate", "crash", _mevis_expression(LONE_SURROGATE), "text is not valid Unicode"),
    Kind("sentence_lone_surrogate", "crash", _sentence_text(LONE_SURROGATE), "text is not valid Unicode"),
    Kind("answer_lone_surrogate", "crash", _llava_answer(LONE_SURROGATE), "malformed entry"),
    Kind("own_expression_lone_surrogate", "crash",
         _own_line(lambda r: {"image": "photos/a.jpg", "expression": LONE_SURROGATE}), "text is not valid Unicode"),
    # Silently wrong before.
    Kind("mask_dict_missing_in_training", "silent", _missing_mask_dict, "error:DatasetFormatError:mask_dict.json"),
    Kind("annotations_folder_missing_in_training", "silent", _missing_annotations,
         "error:DatasetFormatError:Annotations"),
    Kind("duplicate_annotation_id", "silent", _duplicate_annotation, "duplicate id"),
    Kind("duplicate_image_id", "silent", _duplicate_image, "duplicate id"),
    Kind("frame_listed_twice", "silent", _frame_twice, "duplicate id"),
    Kind("duplicate_video_id", "silent", lambda root: _duplicate_key_text(root, "video"), "duplicate id"),
    Kind("duplicate_expression_id", "silent", lambda root: _duplicate_key_text(root, "expression"), "duplicate id"),
    Kind("polygon_outside_image", "silent", _polygon_outside_image, "mask is empty"),
    Kind("expression_zero_width_only", "silent", _mevis_expression(ZERO_WIDTH), "empty expression"),
    Kind("sentence_zero_width_only", "silent", _sentence_text(" " + ZERO_WIDTH + " "), "empty expression"),
    Kind("expression_too_long", "silent", _mevis_expression("the shape " * 2000), "expression too long"),
    # Paths that left the dataset folder, ids that became paths.
    Kind("file_name_absolute", "traversal", _file_name(lambda r: str(r / "refer" / "refcoco" / "instances.json")),
         "path outside the dataset root"),
    Kind("file_name_dotdot", "traversal", _file_name(lambda r: "../../../refcoco/instances.json"),
         "path outside the dataset root"),
    Kind("file_name_symlink_outside", "traversal", _file_name_symlink_outside, "path outside the dataset root"),
    Kind("llava_image_absolute", "traversal", _llava_image(lambda r: "/etc/hostname"), "path outside the dataset root"),
    Kind("llava_image_dotdot", "traversal", _llava_image(lambda r: "../refer/refcoco/instances.json"),
         "path outside the dataset root"),
    Kind("video_id_dotdot", "traversal", _video_id("../../escape"), "id is not a plain name"),
    Kind("video_id_nul", "traversal", _video_id("vid\x00x"), "id is not a plain name"),
    Kind("video_id_absolute", "traversal", _ryvos_video_id("/tmp/escape"), "id is not a plain name"),
    Kind("exp_id_dotdot", "traversal", _exp_id("../../escape"), "id is not a plain name"),
    Kind("exp_id_backslash", "traversal", _exp_id("..\\..\\escape"), "id is not a plain name"),
    Kind("exp_id_empty", "traversal", _exp_id(""), "id is not a plain name"),
    Kind("frame_name_dotdot", "traversal", _frame_name("../../../refer/refcoco/x"), "id is not a plain name"),
    Kind("video_folder_symlink_outside", "traversal", _video_folder_outside, "path outside the dataset root"),
    Kind("own_image_dotdot", "traversal",
         _own_line(lambda r: {"image": "../refer/refcoco/instances.json", "expression": "x"}),
         "path outside the dataset root"),
    Kind("own_image_absolute", "traversal", _own_line(lambda r: {"image": str(r / "own" / "photos" / "a.jpg"),
                                                                  "expression": "x"}), "path outside the dataset root"),
    Kind("own_image_symlink_outside", "traversal", _own_symlink_outside, "path outside the dataset root"),
    Kind("ref_sav_video_path_dotdot", "traversal", _ref_sav_path("video_path", "../../outside.mp4"),
         "path outside the dataset root"),
    Kind("ref_sav_anno_path_absolute", "traversal", _ref_sav_path("anno_path", "/etc/hostname"),
         "path outside the dataset root"),
    Kind("gcg_image_dotdot", "traversal", _gcg_image("../../GranDf_HA_GCG_train.json"), "path outside the dataset root"),
    Kind("chatunivi_video_absolute", "traversal", _chatunivi_video("/dev/zero"), "path outside the dataset root"),
]


# --------------------------------------------------------------------------- configs
def _override(item: str) -> Callable[[Path], Action]:
    def build(root):
        from pipelines.config import load_experiment
        return lambda on_bad: load_experiment(None, item.split(" "))
    return build


def _config_file(text: str | None) -> Callable[[Path], Action]:
    """``text`` written to a YAML file and loaded; None: the folder itself is passed."""
    def build(root):
        from pipelines.config import load_experiment
        path = root if text is None else root / "experiment.yaml"
        if text is not None:
            path.write_text(text)
        return lambda on_bad: load_experiment(path)
    return build


# Nine anchors of nine aliases each: 9**9 values once expanded, under a real key (an error
# message that shows the value, or a validator that walks it, pays for every one).
_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")
) + "train: *i\n"

CONFIG_KINDS: list[Kind] = [
    Kind(f"config_{item.split('=')[0]}_{i}", "config", _override(item), f"error:ConfigError:{text}")
    for i, (item, text) in enumerate([
        ("data.num_frames=0", "data.num_frames"),
        ("data.max_objects=-1", "data.max_objects"),
        ("train.lr=.nan", "finite"),
        ("train.lr=.inf", "finite"),
        ("train.grad_clip=.inf", "finite"),
        ("train.weight_decay=-0.1", "train.weight_decay"),
        ("train.betas=[1.0,0.999]", "train.betas"),
        ("train.betas=[0.9,-0.1]", "train.betas"),
        ("train.lr_multipliers={\"sam\":-1.0}", "train.lr_multipliers {'sam': -1.0} must be >= 0"),
        ("train.cpus_per_worker=-1", "train.cpus_per_worker"),
        ("train.max_failures=-1", "train.max_failures"),
        ("data.cpus_per_task=0", "data.cpus_per_task"),
        ("eval.cpus_per_actor=.nan", "finite"),
        ("model.loss.bce_weight=.nan", "finite"),
        ("train.max_steps=true", "train.max_steps"),
        ("train.max_steps='4'", "train.max_steps"),
        ("train.lr='1e-4'", "train.lr"),
        ("model.mba.enabled=1", "model.mba.enabled"),
        ('data.sources=[{"name":"x","format":"cocoo","root":"/data"}]', "unknown source format 'cocoo'"),
        ("train=5 train.max_steps=7", "sets a key inside train"),
    ])
] + [
    Kind("config_is_a_folder", "config", _config_file(None), "error:ConfigError:is a folder"),
    Kind("config_duplicate_key", "config", _config_file("train:\n  lr: 1.0e-4\n  lr: 3.0e-4\n"),
         "error:ConfigError:key 'lr' is given twice"),
    Kind("config_billion_laughs", "config", _config_file(_LAUGHS), "error:ConfigError:expand to more than"),
]

ALL_KINDS = DATA_KINDS + CONFIG_KINDS


# --------------------------------------------------------------------------- running one kind
def attempt(kind: Kind, root: Path) -> tuple[str, str]:
    """(outcome, what happened) of one kind on the prepared copy at ``root``: outcome is
    ``clean``, ``crash`` or ``silent`` (module docstring)."""
    reported: list[BadRecordError] = []
    try:
        action = kind.build(root)
        action(reported.append)
    except Exception as err:  # noqa: BLE001 - classifying every failure is the point
        if kind.expect.startswith("error:"):
            _, type_name, text = kind.expect.split(":", 2)
            if type(err).__name__ == type_name and text in str(err):
                return "clean", f"{type_name}: {str(err)[:200]}"
        if isinstance(err, DatasetFormatError) and not kind.expect.startswith("error:"):
            return "crash", f"a whole-file error where a bad record was expected: {err}"
        return "crash", f"{type(err).__name__}: {str(err)[:200]}"
    matching = [e for e in reported if e.reason == kind.expect and e.path]
    if matching:
        return "clean", str(matching[0])[:200]
    if reported:
        return "other", f"reported only under another reason: {sorted({e.reason for e in reported})}"
    return "silent", "accepted without a report"


def prepare(synthetic: Path, workdir: Path) -> Path:
    """A fresh copy of the synthetic datasets for one kind."""
    root = workdir / "data"
    shutil.copytree(synthetic, root, symlinks=True)
    return root
