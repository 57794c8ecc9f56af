"""Batch inference over a dataset split with Ray Data, written in the public result layouts.

    salma infer --model PATH_OR_PRESET --dataset FORMAT:ROOT --split SPLIT --out DIR [options]

One row per record (an image with all its referring sentences, or a video with all its
expressions) goes through ``map_batches`` on an actor pool; each actor loads the model once and
wraps the same ``SalmaPredictor`` a notebook uses. Every sentence is one prediction; every frame
of a video is predicted (the MLLM sees the key frames, SAM-2 tracks to the others). The mask of a
prediction is the one of its first ``[SEG]``; an answer without ``[SEG]`` is an empty mask.

Output folder::

    <out>/run_info.json       model, dataset and settings that produced the predictions
    <out>/shards/<key>.json   one per record, written atomically: the unit of resumption
    <out>/results.json        all predictions (written atomically once every record is done):
                              videos: {video_id: {exp_id: {"expression", "prediction_masks":
                              [COCO RLE per frame]}}} (the layout the MeViS / ReVOS / Sa2VA
                              evaluation scripts read); images (RefCOCO family): a list of
                              {"image_id", "ref_id", "sent_index", "sent_id", "sentence",
                              "answer", "segmentation": COCO RLE}, one per sentence
    <out>/Annotations/<video_id>/<exp_id>/<frame>.png   videos: 0/255 single-channel PNGs,
                              frame names as in the dataset (the benchmark servers' layout)
    <out>/submission.zip      with ``--zip``: the PNGs zipped for the benchmark server
    <out>/diagnostics.json    per prediction: answer, key frames, attention-drift energy sums
    <out>/visuals/<key>.png   visual report of the first ``--visual-samples`` records
    <out>/bad_records.json    records whose frames or masks could not be decoded, and records,
                              referents or sentences the reader skipped (``"stage": "index"``:
                              a missing file, an id that is not a plain name, ...), if any

Your own data (``--dataset own_data:DIR --split NAME`` reads ``DIR/NAME.jsonl``, see
``salma.data.own_data``) gets one PNG mask per expression under ``<out>/masks/``, a
``results.json`` listing them with their COCO RLE, and with ``--overlays`` the masks drawn over
the pictures under ``<out>/overlays/`` (``pipelines.own_data_outputs``).

Rerunning with the same ``--out`` skips every record whose shard is complete; a truncated or
partial shard is predicted again. No results file is ever left half-written (temporary file +
``os.replace``). ``--model`` is an exported model folder (``salma export``) or a preset name
(``tiny``: random weights, for tests). ``run_info.json`` is written once predicting has started,
so a command that fails before (a wrong dataset path, a model folder that does not load) can be
corrected and rerun without ``--restart``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipelines import console
from pipelines.config import EvalConfig, SourceConfig, load_experiment
from pipelines.config_errors import ConfigError
from pipelines.local_ray import init_ray
from pipelines.own_data_outputs import merge_own_results, write_own_outputs
from pipelines.progress import Progress
from pipelines.prediction_folder import (
    ANNOTATIONS_DIR,
    BAD_RECORDS,
    DIAGNOSTICS,
    RESULTS,
    RUN_INFO,
    SHARD_VERSION,
    SHARDS_DIR,
    SUBMISSION,
    VISUALS_DIR,
    check_run_info,
    merge_results,
    read_complete_shard,
    shard_key,
    write_json_atomic,
    write_record_outputs,
    expected_annotation_folders,
    zip_submission,
)
from salma.data.decode import decode_masks, load_frames
from salma.data.errors import BadRecordError
from salma.data.masks import encode_mask
from salma.data.record import Referent, SampleRecord
from salma.data.sources import read_source, source_format, source_format_names, split_note

logger = logging.getLogger(__name__)



class InferenceError(RuntimeError):
    """Inference could not produce a complete result (records that could not be decoded)."""


@dataclass
class InferSummary:
    out_dir: str
    name: str
    records: int
    predicted: int
    resumed: int
    bad: int
    frames: int
    seconds: float
    results_path: str | None
    # Per predicted record: sample_id, frames, seconds, started_at / finished_at (wall clock).
    per_record: list[dict[str, Any]] = field(default_factory=list)
    # Records, referents or sentences the reader skipped (listed in bad_records.json).
    skipped_at_index: int = 0

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


# ------------------------------------------------------------------------------ dataset spec
def parse_dataset(
    spec: str, *, split: str, options: Mapping[str, Any] | None = None, name: str | None = None
) -> SourceConfig:
    """``"refcoco:data/synthetic/refer/refcoco"`` → a ``SourceConfig`` with an absolute root."""
    fmt, sep, root = spec.partition(":")
    if not sep or not root:
        raise ConfigError(f"--dataset {spec!r} must be FORMAT:ROOT, e.g. mevis:data/mevis or own_data:my_photos")
    if fmt not in source_format_names():
        raise ConfigError(f"--dataset {spec!r}: unknown format {fmt!r}; choose one of {', '.join(source_format_names(scored=True))}")
    options = dict(options or {})
    root = str(Path(root).expanduser().resolve())
    source = SourceConfig(name="", format=fmt, root=root, split=split, options=options)
    source.name = name or default_name(source)
    return source


def default_name(source: SourceConfig) -> str:
    """``refcoco_val``, ``refcoco_plus_testA``, ``mevis_valid_u``: what metric names carry."""
    dataset = str(source.options.get("dataset", source.format)) if source.format == "refcoco" else source.format
    return metric_safe(f"{dataset}_{source.split}")


def metric_safe(text: str) -> str:
    """MLflow metric names allow letters, digits, ``_ - . / `` and spaces: ``+`` becomes ``_plus``."""
    return re.sub(r"[^A-Za-z0-9_./-]", "_", text.replace("+", "_plus"))


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """``["dataset=refcocog", "split_by=umd"]`` → reader keyword arguments (values parsed as YAML)."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {item!r} must be key=value")
        out[key.strip()] = yaml.safe_load(raw)
    return out


def media_of(source: SourceConfig) -> str:
    """``image`` or ``video`` for a benchmark format, ``mixed`` for one's own data (the format's
    registered media)."""
    fmt = source_format(source.format)
    if fmt.scoring is None:
        raise ConfigError(
            f"format {source.format!r} has no masks to predict (a conversation format); infer runs on "
            f"{', '.join(source_format_names(scored=True))}"
        )
    return fmt.media


def read_records(
    source: SourceConfig, max_samples: int | None = None, *, skipped: list[dict[str, Any]] | None = None
) -> list[SampleRecord]:
    """The split's records, sorted; what the reader skips is appended to ``skipped`` (one
    ``bad_records.json`` entry each) when given."""
    media_of(source)
    on_bad = None
    if skipped is not None:
        def on_bad(err: BadRecordError) -> None:
            skipped.append({"sample_id": err.sample_id, "path": err.path, "reason": err.reason,
                            "detail": err.detail, "stage": "index"})
    records = read_source(source.format, source.root, source.split, on_bad=on_bad, **source.options)
    records.sort(key=lambda r: r.sample_id)
    return records[:max_samples] if max_samples is not None else records


# ------------------------------------------------------------------------------ model
@dataclass
class ShippedModel:
    """An in-memory model as its config and weights, which is how it travels to the actors.

    Pickling the module itself is not reliable: transformers installs output-capturing forward
    hooks on first use that do not survive the trip (the copy returns no hidden states). The actor
    rebuilds the architecture from the config and loads the weights strictly, as an exported
    folder would (non-persistent buffers such as MBA's warm-up scale take their defaults).
    """

    config: dict[str, Any]
    state: dict[str, Any]

    @classmethod
    def of(cls, built) -> "ShippedModel":
        """``built``: a ``salma.builder.BuiltSalma``, whose config rebuilds the architecture."""
        state = {k: v.detach().cpu() for k, v in built.model.state_dict().items()}
        return cls(built.config.model_dump(mode="json"), state)

    def build(self):
        from salma.builder import build_salma
        from salma.config import SalmaConfig

        built = build_salma(SalmaConfig.model_validate(self.config))
        built.model.load_state_dict(self.state, strict=True)
        return built


def load_model(model: Any):
    """A ``salma.builder.BuiltSalma`` (model, tokenizer, config) from: a built model, a
    ``ShippedModel`` (or a Ray object reference to one), an exported folder, or a preset name
    (``tiny``: random weights seeded by the preset's seed, identical in every actor)."""
    from salma.builder import BuiltSalma
    from salma.config import preset_config

    if isinstance(model, BuiltSalma):
        return model
    if not isinstance(model, (str, os.PathLike, ShippedModel)):
        import ray

        if not isinstance(model, ray.ObjectRef):
            raise TypeError(
                f"model must be a BuiltSalma (salma.build_salma), a folder or a preset name, got {type(model).__name__}"
            )
        model = ray.get(model)
    if isinstance(model, ShippedModel):
        return model.build()
    kind, found = check_model_spec(model)
    if kind == "folder":
        from salma.export import load_exported

        return load_exported(found)
    from salma.builder import build_salma

    return build_salma(preset_config(found))


def check_model_spec(model: str | os.PathLike) -> tuple[str, str]:
    """``("folder", path)`` for an exported model folder, ``("preset", name)`` for a preset;
    raises ``ConfigError`` (what was given, what to pass instead) for anything else, and
    ``CheckpointLayoutError`` for a folder whose config does not validate or that lacks its
    weights file. Reads no weights: the driver checks ``--model`` before any actor loads it."""
    from salma.checkpoint_layout import CheckpointLayoutError
    from salma.config import preset_config
    from salma.export import CONFIG_FILE, WEIGHTS_FILE, read_export_config

    spec = str(model)
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / CONFIG_FILE).is_file():
            read_export_config(path)
            if not (path / WEIGHTS_FILE).is_file():
                raise CheckpointLayoutError(f"{path / WEIGHTS_FILE}: the weights file is missing")
            return "folder", str(path)
        if (path / "salma_checkpoint.json").is_file():
            raise ConfigError(
                f"{path} is a training checkpoint; export it first "
                f"(salma export --checkpoint {path} --out DIR) and pass --model DIR"
            )
        raise ConfigError(f"{path} is neither an exported SALMA model (no {CONFIG_FILE}) nor a preset name")
    try:
        preset_config(spec)
    except ValueError:
        raise ConfigError(
            f"--model {spec!r} is not a folder and not a preset; pass an exported model folder "
            "(salma export) or a preset name such as 'tiny'"
        ) from None
    return "preset", spec


def describe_model(model: Any) -> str:
    """What ``run_info.json`` records as the model (absolute for folders)."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(model).expanduser()
        return str(path.resolve()) if path.is_dir() else str(model)
    return "<in-memory model>"


# ------------------------------------------------------------------------------ the actor
class RecordPredictor:
    """Ray Data callable class: one ``SalmaPredictor`` per actor (the model is loaded once, in
    ``__init__``), one record per row. Returns each record's shard (JSON) and its visual report
    (PNG bytes, empty when not asked for)."""

    def __init__(self, *, model: Any, settings: dict[str, Any], device: str = "cpu", threads: int = 1):
        import torch

        from salma.predictor import SalmaPredictor

        torch.set_num_threads(threads)
        self.settings = EvalConfig.model_validate(settings)
        self.predictor = SalmaPredictor(
            load_model(model),
            num_key_frames=self.settings.num_key_frames,
            key_frame_sampling=self.settings.key_frame_sampling,
            max_new_tokens=self.settings.max_new_tokens,
            device=device,
            expression_batch_size=self.settings.expression_batch_size,
            dtype=self.settings.dtype,
            compile_decoder=self.settings.compile_decoder,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = [(str(key), SampleRecord.from_json(str(record_json)), bool(visual))
                   for key, record_json, visual in zip(batch["key"], batch["record"], batch["visual"], strict=True)]
        answered = predict_records(self.predictor, records, generate=self.settings.generate)
        passed = {"job": np.asarray(batch["job"])} if "job" in batch else {}  # which source (infer_many)
        return {**passed, "key": np.asarray(batch["key"], dtype=object),
                "shard": np.asarray([json.dumps(shard, separators=(",", ":")) for shard, _ in answered], dtype=object),
                "visual_png": np.asarray([png or b"" for _, png in answered], dtype=object)}


def predict_records(
    predictor, records: list[tuple[str, SampleRecord, bool]], *, generate: bool
) -> list[tuple[dict, bytes | None]]:
    """``(key, record, visual report wanted)`` → each record's shard and report, in order.

    The records are asked together (``segment_records``: one record alone is exactly
    ``segment_expressions``), and each shard's ``seconds`` is the batch's time shared out by
    frame-sentences."""
    started, started_at = time.perf_counter(), time.time()
    results: list[tuple[dict, bytes | None] | None] = [None] * len(records)
    loaded = []  # (position, key, record, visual, frames, asked)
    for position, (key, record, visual) in enumerate(records):
        try:
            frames = load_frames(record, range(record.num_frames))
        except BadRecordError as err:
            results[position] = _bad_shard(key, record, err), None
            continue
        asked = [(referent, index, expression) for referent in record.referents
                 for index, expression in enumerate(referent.expressions)]
        loaded.append((position, key, record, visual, frames, asked))
    if loaded:
        # (H, W, 3) for an image, (T, H, W, 3) for a video
        media = [frames[0] if len(frames) == 1 else np.stack(frames) for *_, frames, _ in loaded]
        answers = predictor.segment_records(
            [(m, [e for _, _, e in asked]) for m, (*_, asked) in zip(media, loaded)], generate=generate)
        work = [len(frames) * max(1, len(asked)) for *_, frames, asked in loaded]
        seconds = time.perf_counter() - started
        for (position, key, record, visual, frames, asked), answered, share in zip(loaded, answers, work, strict=True):
            results[position] = _shard(record, key, frames, asked, answered, visual=visual,
                                       seconds=seconds * share / sum(work), started_at=started_at)
    return results


def _shard(record: SampleRecord, key: str, frames: list[np.ndarray], asked: list, answered: list, *, visual: bool,
           seconds: float, started_at: float) -> tuple[dict, bytes | None]:
    """One record's answers → its shard (and its visual report when asked for)."""
    height, width = frames[0].shape[:2]
    predictions, figure = [], None
    for (referent, index, expression), prediction in zip(asked, answered, strict=True):
        video = _first_mask(prediction.masks, len(frames), height, width)  # (T, H, W)
        try:  # the ground truth is decoded only here, for the drift sums and the figure
            drift = _drift_entry(prediction, referent, height, width)
            if visual and figure is None:
                figure = _visual(record, referent, frames, video, prediction, expression)
        except BadRecordError as err:
            return _bad_shard(key, record, err), None
        predictions.append({
            "ref_id": referent.ref_id,
            "sent_index": index,
            "expression": expression,
            "answer": prediction.answer,
            "num_masks": len(prediction.masks),
            "key_frames": list(prediction.key_frames),
            "masks": [encode_mask(m) for m in video],
            "drift": drift,
        })
    shard = {
        "version": SHARD_VERSION,
        "key": key,
        "sample_id": record.sample_id,
        "media": record.media,
        "height": height,
        "width": width,
        "frame_names": frame_names(record),
        "predictions": predictions,
        "seconds": seconds,
        "started_at": started_at,  # wall clock, for throughput across actors
        "finished_at": time.time(),
        "complete": True,
    }
    return shard, figure


def _bad_shard(key: str, record: SampleRecord, err: BadRecordError) -> dict:
    return {"version": SHARD_VERSION, "key": key, "sample_id": record.sample_id,
            "error": {"path": err.path, "reason": err.reason, "detail": err.detail}}


def _first_mask(masks: list[np.ndarray], num_frames: int, height: int, width: int) -> np.ndarray:
    """The first [SEG]'s mask as (T, H, W); empty when the answer had no [SEG]."""
    if not masks:
        return np.zeros((num_frames, height, width), dtype=bool)
    mask = np.asarray(masks[0], dtype=bool)
    return mask[None] if mask.ndim == 2 else mask


def _energy_of(prediction) -> tuple[np.ndarray | None, str]:
    """(K, h, w) map of the first [SEG]: the MBA update energy, or the language-conditioned
    feature change when MBA is off (baseline runs)."""
    if prediction.mba_energy is not None and len(prediction.mba_energy):
        return prediction.mba_energy[0], "mba_energy"
    if prediction.language_change is not None and len(prediction.language_change):
        return prediction.language_change[0], "language_change"
    return None, "none"


def _drift_entry(prediction, referent: Referent, height: int, width: int) -> dict[str, Any] | None:
    """Energy sums on target and distractor for data whose distractors are known."""
    from salma.drift_score import drift_terms

    distractors = referent.meta.get("distractor_masks")
    if distractors is None:
        return None
    energy, signal = _energy_of(prediction)
    if energy is None:
        return {"signal": signal, "target": None, "distractor": None, "total": None}
    keys = list(prediction.key_frames)
    target = decode_masks(referent, keys, height, width)  # (K, H, W)
    distractor = decode_masks(Referent(referent.ref_id, [], [], distractors, {}), keys, height, width)
    terms = drift_terms(energy, target, distractor)
    return {"signal": signal, "target": terms.target, "distractor": terms.distractor, "total": terms.total,
            "target_area": terms.target_area, "distractor_area": terms.distractor_area}


def _visual(record, referent, frames, video, prediction, expression) -> bytes:
    from pipelines.visual_report import render_prediction_figure

    keys = list(prediction.key_frames) or [0]
    t = keys[0]
    height, width = frames[0].shape[:2]
    ground_truth = decode_masks(referent, [t], height, width)[0] if referent.masks else None
    distractors = referent.meta.get("distractor_masks")
    distractor = None
    if distractors is not None:
        distractor = decode_masks(Referent(referent.ref_id, [], [], distractors, {}), [t], height, width)[0]
    energy, signal = _energy_of(prediction)
    answer = prediction.answer if len(prediction.answer) <= 60 else prediction.answer[:57] + "..."
    return render_prediction_figure(
        frame=frames[t],
        ground_truth=ground_truth,
        prediction=video[t],
        prior=None if prediction.prior is None else prediction.prior[0],
        energy=None if energy is None else energy[0],
        energy_label="MBA update energy" if signal == "mba_energy" else "language feature change",
        distractor=distractor,
        title=f"{record.sample_id} / {referent.ref_id} (frame {t}): \"{expression}\" → {answer}",
    )


def frame_names(record: SampleRecord) -> list[str]:
    """Frame names as the dataset spells them (file stems), for the PNG layout."""
    if record.frames:
        return [Path(f).stem for f in record.frames]
    return [f"{i:05d}" for i in (record.frame_indices or [])]


# ------------------------------------------------------------------------------ rows and execution
def _inference_row(record: SampleRecord, *, visual: bool) -> dict[str, Any]:
    """What an actor needs of a record: frames, sentences, and ground truth only where the drift
    score or the visual report uses it (ground truth is large and the predictor never sees it)."""
    referents = []
    for r in record.referents:
        has_distractor = "distractor_masks" in r.meta
        meta = {"distractor_masks": r.meta["distractor_masks"]} if has_distractor else {}
        masks = r.masks if (visual or has_distractor) else []
        referents.append(Referent(r.ref_id, r.object_ids, r.expressions, masks, meta))
    slim = SampleRecord(
        source=record.source, split=record.split, sample_id=record.sample_id, media=record.media,
        height=record.height, width=record.width, frames=record.frames, referents=referents,
        video_path=record.video_path, frame_indices=record.frame_indices,
    )
    return {"key": shard_key(record.sample_id), "record": slim.to_json(), "visual": visual}


def predict_rows(
    rows: list[dict[str, Any]], *, model: Any, settings: EvalConfig, use_gpu: bool
) -> Iterator[dict[str, Any]]:
    """Yield one output row per input row, from a Ray Data actor pool, or in this process when
    ``settings.num_actors == 0``; ``settings.records_per_batch`` rows at a time either way."""
    constructor = {"model": model, "settings": settings.model_dump(), "device": "cuda" if use_gpu else "cpu",
                   "threads": settings.threads_per_actor}
    if settings.num_actors == 0:
        predictor = RecordPredictor(**constructor)
        size = settings.records_per_batch
        for start in range(0, len(rows), size):
            batch = rows[start : start + size]
            out = predictor({k: np.asarray([row[k] for row in batch], dtype=object) for k in batch[0]})
            yield from ({k: v[i] for k, v in out.items()} for i in range(len(batch)))
        return
    import ray

    from salma.builder import BuiltSalma

    if isinstance(model, BuiltSalma):
        constructor["model"] = ray.put(ShippedModel.of(model))  # one copy in the object store
    console.quiet_ray_data()
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))  # one row per block: balanced actors
    dataset = dataset.map_batches(
        RecordPredictor,
        batch_size=settings.records_per_batch,
        compute=ray.data.ActorPoolStrategy(size=settings.num_actors),
        fn_constructor_kwargs=constructor,
        num_cpus=settings.cpus_per_actor,
        num_gpus=1 if use_gpu else 0,
        # sam2's tracker draws a progress bar per video; tqdm reads this when it is imported.
        runtime_env={"env_vars": {"TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(settings.threads_per_actor)}},
    )
    yield from dataset.iter_rows()


def ensure_ray(address: str | None = None) -> bool:
    """Connect to (or start) Ray unless the caller already did; True when this call started it.
    Without an address (and no ``$RAY_ADDRESS``) the Ray it starts listens on 127.0.0.1 only
    (``pipelines.local_ray``)."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, **console.ray_init_options())
    else:
        init_ray(**console.ray_init_options())
    return True


def _gpus_wanted(settings: EvalConfig) -> bool:
    """``eval.use_gpu``, else: GPUs when the cluster (or, without Ray, this machine) has them."""
    if settings.use_gpu is not None:
        return settings.use_gpu
    if settings.num_actors == 0:
        import torch

        return torch.cuda.is_available()
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def _progress(name: str, total: int, resumed: int) -> Progress:
    return Progress(f"infer {name}", total=total, unit="record", initial=resumed)


# ------------------------------------------------------------------------------ entry point
def infer(model: Any, source: SourceConfig, out_dir: str | os.PathLike, **options: Any) -> InferSummary:
    """Predict every sentence of ``source`` and write the output folder (module docstring);
    ``options`` as for ``infer_many``."""
    return infer_many(model, [(source, out_dir)], **options)[0]


def infer_many(
    model: Any,
    jobs: Sequence[tuple[SourceConfig, str | os.PathLike]],
    *,
    settings: EvalConfig | None = None,
    resume: bool = True,
    zip_annotations: bool = False,
    max_bad_fraction: float = 0.0,
    address: str | None = None,
    overlays: bool = False,
) -> list[InferSummary]:
    """``infer`` for several ``(source, output folder)`` pairs in one pass: one actor pool
    (each actor loads the model once) predicts the pending records of every source, and each
    folder is written as ``infer`` alone would write it.

    model: an exported folder, a preset name, or an in-memory ``BuiltSalma`` (shipped to the
    actors as config + weights; with ``num_actors=0`` it is used as is, and switched to eval
    mode). ``resume=False`` discards earlier outputs in the folders. Uses the Ray cluster
    already initialised in this process, else ``ray.init(address)``. Raises ``InferenceError``
    when more than ``max_bad_fraction`` of a source's records could not be decoded (checked per
    source once every source is predicted, after writing everything else, so a rerun only
    retries those). ``overlays`` (own data): also draw every mask over its picture
    (``pipelines.own_data_outputs``).
    """
    settings = settings or EvalConfig()
    if isinstance(model, (str, os.PathLike)):
        kind, found = check_model_spec(model)
        if kind == "folder":  # the actors run in another working directory
            model = str(Path(found).resolve())
    started = [_start_job(model, source, out_dir, settings=settings, resume=resume) for source, out_dir in jobs]
    _predict_jobs(started, model=model, settings=settings, address=address, overlays=overlays)
    return [_finish_job(job, zip_annotations=zip_annotations, max_bad_fraction=max_bad_fraction) for job in started]


@dataclass
class _Job:
    """One source's inference: what to predict, and what came back."""

    source: SourceConfig
    out: Path
    info: dict[str, Any]
    records: list[SampleRecord]
    skipped: list[dict[str, Any]]
    todo: list[SampleRecord]
    resumed: int
    visual_keys: set[str]
    started: float
    seconds: float = 0.0
    bad: list[dict[str, Any]] = field(default_factory=list)
    per_record: list[dict[str, Any]] = field(default_factory=list)
    frames_done: int = 0

    @property
    def media(self) -> str:
        return self.info["media"]


def _start_job(model: Any, source: SourceConfig, out_dir: str | os.PathLike, *, settings: EvalConfig,
               resume: bool) -> _Job:
    info = {
        "model": describe_model(model), "name": source.name, "format": source.format, "root": source.root,
        "split": source.split, "options": source.options, "media": media_of(source), **settings.model_dump(),
    }
    out = _prepare_folder(out_dir, resume=resume, info=info)
    skipped: list[dict[str, Any]] = []
    records = read_records(source, settings.max_samples, skipped=skipped)
    if skipped:
        logger.warning("infer %s: the reader skipped %d record(s), referent(s) or sentence(s); see %s",
                       source.name, len(skipped), out / BAD_RECORDS)
    if not records:
        note = split_note(source.format, source.root, source.split, **source.options)
        raise InferenceError(f"{source.format}:{source.root} split {source.split!r} has no usable records{note}")
    todo, resumed = _pending(out, records)
    logger.info("infer %s: %d records, %d already predicted, %d to predict", source.name, len(records),
                len(records) - len(todo), len(todo))
    visual_keys = {shard_key(r.sample_id) for r in records[: settings.visual_samples]}
    return _Job(source, out, info, records, skipped, todo, resumed, visual_keys, time.perf_counter())


def _finish_job(job: _Job, *, zip_annotations: bool, max_bad_fraction: float) -> InferSummary:
    out, source, records = job.out, job.source, job.records
    write_json_atomic(out / RUN_INFO, job.info)  # (also when every record was done already)
    _check_bad(out, job.bad, len(records), max_bad_fraction, skipped=job.skipped)
    bad_ids = {b["sample_id"] for b in job.bad}
    kept = [r for r in records if r.sample_id not in bad_ids]
    results = merge_own_results(out, kept) if job.media == "mixed" else merge_results(out, kept, job.media)
    if zip_annotations and job.media == "video":
        logger.info("wrote %s", zip_submission(out, source.format, expected=expected_annotation_folders(kept)))
    frames = sum(r["frames"] for r in job.per_record)
    summary = InferSummary(str(out), source.name, len(records), len(job.per_record), job.resumed, len(job.bad),
                           frames, job.seconds, str(results), job.per_record, len(job.skipped))
    logger.info("infer %s: %d records predicted, %d resumed, %d bad; %d frames in %.1f s (%.1f frames/s) → %s",
                source.name, summary.predicted, job.resumed, len(job.bad), frames, job.seconds,
                summary.frames_per_second, results)
    return summary


def _prepare_folder(out_dir: str | os.PathLike, *, resume: bool, info: dict[str, Any]) -> Path:
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        for stale in (SHARDS_DIR, ANNOTATIONS_DIR, VISUALS_DIR):
            shutil.rmtree(out / stale, ignore_errors=True)
        for stale in (RUN_INFO, RESULTS, DIAGNOSTICS, BAD_RECORDS, SUBMISSION):
            (out / stale).unlink(missing_ok=True)
    check_run_info(out, info, write=False)  # written once predicting has started
    return out


def _pending(out: Path, records: Iterable[SampleRecord]) -> tuple[list[SampleRecord], int]:
    todo, resumed = [], 0
    for record in records:
        if read_complete_shard(out / SHARDS_DIR / f"{shard_key(record.sample_id)}.json", record) is None:
            todo.append(record)
        else:
            resumed += 1
    return todo, resumed


def _predict_jobs(jobs: list[_Job], *, model: Any, settings: EvalConfig, address: str | None,
                  overlays: bool = False) -> None:
    """Predict every job's pending records through one actor pool, writing each record's outputs
    into its job's folder as it arrives (``run_info.json`` = the job's ``info`` before the
    first); fills each job's bad records, per-record timings and seconds."""
    rows = [_inference_row(r, visual=shard_key(r.sample_id) in job.visual_keys) | {"job": j}
            for j, job in enumerate(jobs) for r in job.todo]
    for job in jobs:
        job.seconds = time.perf_counter() - job.started
    if not rows:
        return
    if settings.num_actors > 0:
        ensure_ray(address)
    by_key = [{shard_key(r.sample_id): r for r in job.todo} for job in jobs]
    progress = [_progress(job.source.name, len(job.records), job.resumed) if job.todo else None for job in jobs]
    waiting = [len(job.todo) for job in jobs]
    for row in predict_rows(rows, model=model, settings=settings, use_gpu=_gpus_wanted(settings)):
        j = int(row["job"])
        job, shard = jobs[j], json.loads(row["shard"])
        if "error" in shard:
            job.bad.append({"sample_id": shard["sample_id"], **shard["error"]})
            logger.warning("record %s skipped: %s (%s)", shard["sample_id"], shard["error"]["reason"],
                           shard["error"]["path"])
        else:
            if not job.per_record:
                write_json_atomic(job.out / RUN_INFO, job.info)
            own = job.media == "mixed"
            if own:
                write_own_outputs(job.out, shard, by_key[j][shard["key"]], overlays=overlays)
            write_record_outputs(job.out, shard, bytes(row["visual_png"]) or None, annotations=not own)
            frames = len(shard["frame_names"]) * len(shard["predictions"])
            job.per_record.append({k: shard[k] for k in ("sample_id", "seconds", "started_at", "finished_at")}
                                  | {"frames": frames})
            job.frames_done += frames
        job.seconds = time.perf_counter() - job.started
        rate = job.frames_done / job.seconds if job.seconds > 0 else 0.0
        progress[j].update(progress[j].done + 1, **{"frames/s": rate})
        waiting[j] -= 1
        if waiting[j] == 0:
            progress[j].close()


def _check_bad(
    out: Path, bad: list[dict[str, Any]], total: int, max_bad_fraction: float, *, skipped: Sequence[dict] = ()
) -> None:
    """Write ``bad_records.json`` (decode failures, then what the reader skipped); raise when the
    decode failures pass ``max_bad_fraction`` of the records."""
    (out / BAD_RECORDS).unlink(missing_ok=True)
    if not bad and not skipped:
        return
    write_json_atomic(out / BAD_RECORDS, [*bad, *skipped])
    if len(bad) > max_bad_fraction * total:
        raise InferenceError(
            f"{len(bad)} of {total} records could not be decoded (see {out / BAD_RECORDS}); "
            "fix or remove them and rerun (finished records are kept), or raise --max-bad-fraction"
        )


def settings_from_args(args: argparse.Namespace) -> EvalConfig:
    """The eval section of ``--config`` (or the defaults) with the flags given on the command line."""
    settings = load_experiment(args.config).eval if args.config else EvalConfig()
    flags = {
        "num_actors": args.num_actors, "cpus_per_actor": args.cpus_per_actor, "use_gpu": args.gpu,
        "num_key_frames": args.num_key_frames, "key_frame_sampling": args.key_frame_sampling,
        "max_samples": args.max_samples, "visual_samples": args.visual_samples,
        "max_new_tokens": args.max_new_tokens, "threads_per_actor": args.threads_per_actor,
        "generate": False if args.teacher_force else None,
        "records_per_batch": args.records_per_batch, "expression_batch_size": args.expression_batch_size,
        "dtype": args.dtype, "compile_decoder": args.compile_decoder,
    }
    return EvalConfig.model_validate(settings.model_dump() | {k: v for k, v in flags.items() if v is not None})


def add_dataset_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--dataset", required=required, metavar="FORMAT:ROOT",
                        help=f"dataset format and folder; formats: {', '.join(source_format_names(scored=True))}")
    parser.add_argument("--split", required=required, help="split name as the reader knows it (val, valid_u, ...)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="reader option, repeatable (e.g. dataset=refcocog, split_by=umd, masks=png)")
    parser.add_argument("--name", help="benchmark name in metric names (default FORMAT_SPLIT, e.g. refcoco_val)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="salma infer", description=__doc__.split("\n\n")[0],
                                     formatter_class=console.DocstringHelp,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--model", required=True, help="exported model folder or preset name (tiny)")
    add_dataset_arguments(parser, required=True)
    parser.add_argument("--out", required=True, help="output folder (reused: finished records are skipped)")
    parser.add_argument("--config", help="experiment YAML whose eval: section gives the defaults")
    parser.add_argument("--num-actors", type=int, help="predictor actors (0: in this process, no Ray)")
    parser.add_argument("--cpus-per-actor", type=float)
    parser.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                        help="one GPU per actor (default: when the cluster has GPUs)")
    parser.add_argument("--threads-per-actor", type=int)
    parser.add_argument("--num-key-frames", type=int)
    parser.add_argument("--key-frame-sampling", choices=("uniform", "first"))
    parser.add_argument("--max-samples", type=int, help="only the first N records (sorted by id)")
    parser.add_argument("--visual-samples", type=int, help="records drawn in the visual report")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--teacher-force", action="store_true",
                        help='answer "It is [SEG]." instead of generating (untrained models, branch checks)')
    parser.add_argument("--records-per-batch", type=int,
                        help="records an actor asks together: one encoder batch, shared language-model batches "
                             "(default 1)")
    parser.add_argument("--expression-batch-size", type=int,
                        help="expressions batched through the language model (default 16)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"),
                        help="compute precision (default auto: bfloat16 on GPU, float16 where it lacks bf16, "
                             "float32 on CPU)")
    parser.add_argument("--compile-decoder", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the SAM-2 mask decoder and MBA in each actor")
    parser.add_argument("--restart", action="store_true", help="discard earlier predictions in --out")
    parser.add_argument("--zip", action="store_true",
                        help="also write submission.zip for the benchmark server (video datasets)")
    parser.add_argument("--max-bad-fraction", type=float, default=0.0)
    parser.add_argument("--overlays", action="store_true",
                        help="own data: also draw each mask over its image or video frames (overlays/)")
    parser.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    args = parser.parse_args(argv)
    console.configure()
    source = parse_dataset(args.dataset, split=args.split, options=parse_options(args.option), name=args.name)
    import ray

    ray_was_up = ray.is_initialized()
    try:
        summary = infer(args.model, source, args.out, settings=settings_from_args(args), resume=not args.restart,
                        zip_annotations=args.zip, max_bad_fraction=args.max_bad_fraction, address=args.address,
                        overlays=args.overlays)
    finally:
        if not ray_was_up and ray.is_initialized():
            ray.shutdown()
    print(f"{summary.name}: {summary.records} records ({summary.predicted} predicted, {summary.resumed} resumed), "
          f"{summary.frames_per_second:.1f} frames/s → {summary.results_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
