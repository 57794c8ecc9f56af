"""Score predictions against a benchmark's ground truth, write the tables, log to MLflow.

    salma evaluate --pred DIR [--dataset FORMAT:ROOT --split SPLIT] [--run-id ID [--new-run]]

``DIR`` is an output folder of ``salma infer`` (its ``run_info.json`` names the dataset, so
``--dataset``/``--split`` are only needed for a ``results.json`` made elsewhere in the same
layout). Scores follow the public evaluation code exactly (``salma.metrics``):

- RefCOCO / RefCOCO+ / RefCOCOg: cIoU and gIoU over sentences;
- MeViS, Ref-YouTube-VOS, Ref-DAVIS17 (and Ref-SAV): J, F, J&F, mean over expressions of the
  frame means;
- ReVOS: J, F, J&F, A, R for referring, reasoning and overall (= mean of the two);
- your own data (``own_data``) with masks: cIoU / gIoU over its image expressions and J, F, J&F
  over its video expressions (groups ``images`` and ``videos`` when it has both); lines without a
  mask are not scored (counted as ``unannotated``), and a split with no mask at all is refused
  with a message saying so.

Missing predictions: a sentence or expression without one is an empty mask; a video with no
predictions at all scores 0 (J = F = 0) for each of its expressions, with a warning naming the
videos, as MeViS's ``eval_mevis.py`` scores a video folder missing from a submission.

Benchmark scores are in percent, as papers report them. Where the data knows its distractors
(the synthetic drift splits), the MBA update-energy shares (``salma.drift_score``; an energy, not an
attention measure) are added from the
inference diagnostics. Writes ``scores.md``, ``scores.csv`` and ``per_expression.csv`` to ``--out``
(default: DIR) and logs every score as ``eval/<benchmark>/<metric>`` — e.g.
``eval/refcoco_val/ciou``, ``eval/mevis_valid_u/jf``, ``eval/revos_valid/overall/jf``,
``eval/mevis_drift/update_energy/target_share`` — plus the tables and the visual report as artifacts:
on the run that produced the model (``--run-id``), or on a new evaluation run (tagged
``salma.model_run_id`` when ``--run-id`` is given with ``--new-run``).

Video metrics are computed by a pool of processes, one task per expression.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import console
from pipelines.config import EvalConfig, SourceConfig, TrackingConfig
from pipelines.infer import (
    ShippedModel,
    add_dataset_arguments,
    default_name,
    ensure_ray,
    infer_many,
    media_of,
    metric_safe,
    parse_dataset,
    parse_options,
    read_records,
)
from pipelines.prediction_folder import (
    BAD_RECORDS,
    DIAGNOSTICS,
    RESULTS,
    RUN_INFO,
    VISUALS_DIR,
    prediction_id,
    write_json_atomic,
    write_text_atomic,
)
from salma.data.formats import source_format
from salma.data.masks import decode_rle
from salma.data.record import SampleRecord
from salma.drift_score import DriftTerms, update_energy_shares
from salma.metrics import (
    aggregate_expressions,
    aggregate_revos,
    ciou_giou,
    jaccard,
    video_jf,
    video_revos,
)

logger = logging.getLogger(__name__)

TABLE_MD = "scores.md"
TABLE_CSV = "scores.csv"
PER_EXPRESSION_CSV = "per_expression.csv"
# Column order of the markdown table: (metric key in BenchmarkScores.groups, header).
_COLUMNS = (("cIoU", "cIoU"), ("gIoU", "gIoU"), ("J", "J"), ("F", "F"), ("J&F", "J&F"), ("A", "A"), ("R", "R"))
_METRIC_NAME = {"cIoU": "ciou", "gIoU": "giou", "J": "j", "F": "f", "J&F": "jf", "A": "a", "R": "r"}


MISSING_VIDEO = "missing video"  # the prediction of an expression whose video has none


class EvaluationError(RuntimeError):
    """The predictions cannot be scored (no ground truth, wrong layout, mismatched frames)."""


@dataclass
class BenchmarkScores:
    """One benchmark split's scores. ``groups``: "all" (or ReVOS's "referring", "reasoning",
    "overall") → metric → value in percent."""

    name: str
    format: str
    split: str
    groups: dict[str, dict[str, float]]
    counts: dict[str, float] = field(default_factory=dict)
    drift: dict[str, float] | None = None
    per_expression: list[dict[str, Any]] = field(default_factory=list)
    # What the reader left out (bad_records.json entries): not in the denominator.
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        """Flat MLflow metric names: ``eval/<name>/<metric>`` (ReVOS: ``eval/<name>/<group>/<metric>``)."""
        out = {}
        for group, values in self.groups.items():
            base = f"{prefix}/{self.name}" if group == "all" else f"{prefix}/{self.name}/{group}"
            out.update({f"{base}/{_METRIC_NAME[k]}": v for k, v in values.items()})
        out.update({f"{prefix}/{self.name}/{k}": v for k, v in self.counts.items()})
        if self.drift is not None:
            out.update({f"{prefix}/{self.name}/update_energy/{k}": v for k, v in self.drift.items() if not math.isnan(v)})
        return out


@dataclass
class TrackingTarget:
    """Where scores go in MLflow: onto ``run_id`` (the run that produced the model), or onto a
    new evaluation run (``run_id`` None, or ``new_run``), tagged ``salma.model_run_id``."""

    uri: str
    run_id: str | None = None
    new_run: bool = False
    experiment: str = "salma"
    run_name: str = "evaluate"
    step: int = 0


@dataclass
class EvaluationReport:
    scores: list[BenchmarkScores]
    metrics: dict[str, float]
    table_md: str
    table_csv: str
    run_id: str | None


# ------------------------------------------------------------------------------ scoring
def score_predictions(
    pred_dir: str | os.PathLike,
    source: SourceConfig,
    *,
    workers: int | None = None,
    max_samples: int | None = None,
) -> BenchmarkScores:
    """Score ``pred_dir/results.json`` against ``source``'s ground truth (``max_samples``: the
    first N records by id, as ``salma infer --max-samples`` predicted)."""
    pred = Path(pred_dir)
    results_path = pred / RESULTS
    if not results_path.is_file():
        raise EvaluationError(f"{results_path} does not exist; run salma infer first (or finish the interrupted run)")
    results = json.loads(results_path.read_text())
    skipped: list[dict[str, Any]] = []
    records = read_records(source, max_samples, skipped=skipped)
    if source_format(source.format).scoring == "own":
        return _with_skipped(_with_diagnostics(_score_own(source, records, results, workers, pred), pred), skipped)
    missing_truth = [r.sample_id for r in records if r.meta.get("has_ground_truth") is False]
    if missing_truth:
        raise EvaluationError(
            f"{source.format} split {source.split!r} has no ground truth (e.g. {missing_truth[0]}): submit "
            f"{pred / 'Annotations'} to the benchmark server instead (salma infer --zip writes submission.zip)"
        )
    if media_of(source) == "image":
        scores = _score_images(source, records, results)
    else:
        scores = _score_videos(source, records, results, workers)
    return _with_skipped(_with_diagnostics(scores, pred), skipped)


def _with_skipped(scores: BenchmarkScores, skipped: list[dict[str, Any]]) -> BenchmarkScores:
    """Record what the reader left out of the denominator: ground-truth referents whose
    annotations are missing, unreadable videos, ... (``skipped_by_reader`` in the counts, the
    entries in ``scores.skipped``, a note under the table, ``bad_records.json``). A record left
    with no referent is reported once more as "no usable referents"; that repeat is not counted."""
    scores.skipped = [s for s in skipped if s["reason"] != "no usable referents"]
    if scores.skipped:
        scores.counts["skipped_by_reader"] = float(len(scores.skipped))
        logger.warning("%s: %d referents or records are not scored: %s", scores.name, len(scores.skipped),
                       skipped_summary(scores.skipped))
    return scores


def skipped_summary(skipped: Sequence[dict[str, Any]]) -> str:
    """``"3 x anno_id missing from mask_dict, 1 x missing frame file"``."""
    reasons: dict[str, int] = {}
    for entry in skipped:
        reasons[entry["reason"]] = reasons.get(entry["reason"], 0) + 1
    return ", ".join(f"{n} x {reason}" for reason, n in sorted(reasons.items()))


def write_skipped(out: Path, scores: Sequence[BenchmarkScores]) -> None:
    """Put what the reader skipped into ``out/bad_records.json``: entries of ``salma infer``'s own
    decoding (no ``"stage": "index"``) are kept, its reader entries replaced by the evaluation's."""
    path = out / BAD_RECORDS
    kept: list[Any] = []
    if path.is_file():
        try:
            kept = [e for e in json.loads(path.read_text()) if not (isinstance(e, dict) and e.get("stage") == "index")]
        except (ValueError, TypeError) as err:
            logger.warning("%s is unreadable (%s); writing it again", path, err)
    entries = [{"benchmark": s.name, **e} for s in scores for e in s.skipped]
    if entries or kept:
        write_json_atomic(path, [*kept, *entries])


def _with_diagnostics(scores: BenchmarkScores, pred: Path) -> BenchmarkScores:
    """Add the update-energy shares and the share of answers without ``[SEG]`` from the diagnostics."""
    diagnostics_path = pred / DIAGNOSTICS
    if diagnostics_path.is_file():
        diagnostics = json.loads(diagnostics_path.read_text())
        scores.drift = _drift(diagnostics)
        if diagnostics:
            scores.counts["no_seg_fraction"] = sum(d["num_masks"] == 0 for d in diagnostics) / len(diagnostics)
    return scores


def _score_own(
    source: SourceConfig, records: list[SampleRecord], results: Any, workers: int | None, pred: Path
) -> BenchmarkScores:
    """Own data: the annotated expressions of its images as RefCOCO, of its videos as MeViS."""
    if not isinstance(results, list):
        raise EvaluationError(f"{pred / RESULTS}: own-data predictions are a list of per-expression entries")
    annotated, unannotated = [], 0
    for record in records:
        referents = [r for r in record.referents if r.meta.get("has_mask")]
        unannotated += sum(len(r.expressions) for r in record.referents if not r.meta.get("has_mask"))
        if referents:
            annotated.append(dataclasses.replace(record, referents=referents))
    if not annotated:
        raise EvaluationError(
            f"own_data split {source.split!r} ({source.root}) has no masks: there is no ground truth to score. "
            f"The predictions are in {pred} (masks/, results.json); add \"mask\" to the lines to evaluate"
        )
    images = [r for r in annotated if r.media == "image"]
    videos = [r for r in annotated if r.media == "video"]
    video_results: dict[str, dict[str, Any]] = {}
    for entry in results:
        if "prediction_masks" in entry:
            video_results.setdefault(entry["sample_id"], {})[entry["id"]] = entry
    parts = []
    if images:
        parts.append(("images", _score_images(source, images, [e for e in results if "segmentation" in e])))
    if videos:
        parts.append(("videos", _score_videos(source, videos, video_results, workers)))
    if len(parts) == 1:
        scores = parts[0][1]
    else:
        scores = BenchmarkScores(
            name=source.name, format=source.format, split=source.split,
            groups={group: part.groups["all"] for group, part in parts},
            counts={f"{group}_{k}": v for group, part in parts for k, v in part.counts.items()},
            per_expression=[row for _, part in parts for row in part.per_expression],
        )
    scores.counts["unannotated"] = float(unannotated)
    if unannotated:
        logger.warning("%s: %d expressions have no mask and are not scored", source.name, unannotated)
    return scores


def _score_images(source: SourceConfig, records: list[SampleRecord], results: Any) -> BenchmarkScores:
    if not isinstance(results, list):
        raise EvaluationError(f"{source.format} predictions must be a list of per-sentence entries (see salma infer)")
    predicted = {(str(e["ref_id"]), int(e.get("sent_index", 0))): e["segmentation"] for e in results}
    rows: list[dict[str, Any]] = []
    missing = 0

    def pairs() -> Iterator[tuple[np.ndarray | None, np.ndarray]]:
        nonlocal missing
        for record in records:
            for referent in record.referents:
                gt = decode_rle(referent.masks[0])  # (H, W)
                for index, sentence in enumerate(referent.expressions):
                    rle = predicted.get((referent.ref_id, index))
                    missing += rle is None
                    pred = None if rle is None else decode_rle(rle)
                    if pred is not None and pred.shape != gt.shape:
                        raise EvaluationError(f"ref {referent.ref_id}: prediction {pred.shape} vs image {gt.shape}")
                    rows.append({"sample_id": record.sample_id, "ref_id": referent.ref_id, "sent_index": index,
                                 "expression": sentence,
                                 "iou": jaccard(np.zeros_like(gt) if pred is None else pred, gt)})
                    yield pred, gt

    ciou, giou = ciou_giou(pairs())
    if missing:
        logger.warning("%s: %d of %d sentences have no prediction (counted as empty masks)",
                       source.name, missing, len(rows))
    return BenchmarkScores(
        name=source.name, format=source.format, split=source.split,
        groups={"all": {"cIoU": 100.0 * ciou, "gIoU": 100.0 * giou}},
        counts={"sentences": float(len(rows)), "missing_predictions": float(missing)},
        per_expression=rows,
    )


def _score_videos(
    source: SourceConfig, records: list[SampleRecord], results: Any, workers: int | None
) -> BenchmarkScores:
    if not isinstance(results, dict):
        raise EvaluationError(f"{source.format} predictions must map video → expression (see salma infer)")
    revos = source_format(source.format).scoring == "revos"
    tasks, meta, missing = [], [], 0
    # A video with no predictions at all scores 0 (J = F = 0) for each of its expressions, as
    # MeViS's eval_mevis.py does for a video folder missing from the submission; a missing
    # expression of a predicted video is an empty mask (below).
    missing_videos = sorted(r.sample_id for r in records if r.sample_id not in results)
    if missing_videos:
        logger.warning("%s: %d videos have no predictions and score 0 for their expressions: %s",
                       source.name, len(missing_videos), ", ".join(missing_videos))  # fmt: skip
    for record in records:
        fg = record.meta.get("foreground_masks") if revos else None
        if revos and fg is None:
            raise EvaluationError(
                f"ReVOS video {record.sample_id} has no foreground masks; R needs mask_dict_foreground.json"
            )
        for referent in record.referents:
            for index, sentence in enumerate(referent.expressions):
                pid = prediction_id(referent.ref_id, index)
                entry = results.get(record.sample_id, {}).get(pid)
                masks = None if entry is None else entry.get("prediction_masks")
                if record.sample_id in missing_videos:
                    missing += 1
                    masks = MISSING_VIDEO
                elif masks is None:
                    missing += 1
                elif len(masks) != record.num_frames:
                    raise EvaluationError(
                        f"{record.sample_id}/{pid}: {len(masks)} predicted masks for {record.num_frames} frames"
                    )
                tasks.append((masks, referent.masks, fg, record.height, record.width))
                meta.append({"sample_id": record.sample_id, "ref_id": pid, "expression": sentence,
                             "type_id": referent.meta.get("type_id")})
    if not tasks:
        raise EvaluationError(f"{source.name}: no expressions to score")
    if missing:
        logger.warning("%s: %d of %d expressions have no prediction (counted as empty masks)",
                       source.name, missing, len(tasks))
    per_expression = _map(score_expression, tasks, workers)
    rows = [m | s for m, s in zip(meta, per_expression, strict=True)]
    counts = {"expressions": float(len(rows)), "missing_predictions": float(missing),
              "missing_videos": float(len(missing_videos))}  # fmt: skip
    if revos:
        groups = aggregate_revos(per_expression, [m["type_id"] for m in meta])  # already in percent
    else:
        groups = {"all": {k: 100.0 * v for k, v in aggregate_expressions(per_expression).items()}}
    return BenchmarkScores(name=source.name, format=source.format, split=source.split, groups=groups,
                           counts=counts, per_expression=rows)


def score_expression(task: tuple) -> dict[str, float]:
    """One expression (a pool task): (pred RLEs or None or ``MISSING_VIDEO``, GT RLEs, foreground
    RLEs or None, H, W) → ``video_jf`` (or ``video_revos`` with a foreground) as fractions. An
    expression of a video missing from the predictions gets J = F = 0 (its other scores are
    those of an empty prediction)."""
    pred_rles, gt_rles, fg_rles, height, width = task
    missing_video = isinstance(pred_rles, str) and pred_rles == MISSING_VIDEO
    pred = _stack(None if missing_video else pred_rles, len(gt_rles), height, width)
    gt = _stack(gt_rles, len(gt_rles), height, width)
    scores = video_jf(pred, gt) if fg_rles is None else video_revos(pred, gt, _stack(fg_rles, len(gt_rles), height, width))
    if missing_video:
        scores.update({"J": 0.0, "F": 0.0, "J&F": 0.0})
    return scores


def _stack(rles: Sequence[dict | None] | None, num_frames: int, height: int, width: int) -> np.ndarray:
    """(T, H, W) bool from per-frame RLEs; None (or no list at all) is an empty mask."""
    out = np.zeros((num_frames, height, width), dtype=bool)
    for t, rle in enumerate(rles or []):
        if rle is not None:
            out[t] = decode_rle(rle)
    return out


def _map(fn, tasks: list, workers: int | None) -> list:
    """``fn`` over ``tasks`` in a process pool (spawned: the caller may hold Ray's threads)."""
    workers = min(workers or os.cpu_count() or 1, len(tasks))
    if workers <= 1:
        return [fn(t) for t in tasks]
    # An executor (unlike multiprocessing.Pool) raises when a worker dies instead of waiting forever.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, tasks, chunksize=max(1, len(tasks) // (4 * workers))))


def _drift(diagnostics: list[dict[str, Any]]) -> dict[str, float] | None:
    """The MBA update-energy shares of the predictions whose distractors are known, or None."""
    entries = [d["drift"] for d in diagnostics if d.get("drift") is not None]
    if not entries:
        return None
    terms = [
        DriftTerms(0.0, 0.0, 0.0) if e["target"] is None
        else DriftTerms(e["target"], e["distractor"], e["total"],
                        e.get("target_area", 0.0), e.get("distractor_area", 0.0))
        for e in entries
    ]
    score = update_energy_shares(terms)
    signals = sorted({e["signal"] for e in entries})
    logger.info("update energy (%s): target share %.3f over %d samples (%d unscored)",
                "/".join(signals), score["target_share"], int(score["scored"]), int(score["unscored"]))
    return score


# ------------------------------------------------------------------------------ reports
def write_tables(scores: Sequence[BenchmarkScores], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``scores.md`` (one row per benchmark and group), ``scores.csv`` (long: one metric per row)
    and ``per_expression.csv``; each written atomically."""
    out = Path(out_dir)
    md = ["| benchmark | group | " + " | ".join(h for _, h in _COLUMNS) + " | update-energy target share | expressions |",
          "|" + "---|" * (len(_COLUMNS) + 4)]
    long_rows = [("benchmark", "format", "split", "group", "metric", "value")]
    for s in scores:
        share = s.drift["target_share"] if s.drift else float("nan")
        count = s.counts.get("sentences", s.counts.get("expressions", 0.0))
        for group, values in s.groups.items():
            cells = [f"{values[k]:.2f}" if k in values else "" for k, _ in _COLUMNS]
            md.append(f"| {s.name} | {group} | " + " | ".join(cells) +
                      f" | {'' if math.isnan(share) else f'{share:.3f}'} | {int(count)} |")
            long_rows += [(s.name, s.format, s.split, group, k, f"{v:.6f}") for k, v in values.items()]
        long_rows += [(s.name, s.format, s.split, "counts", k, f"{v:g}") for k, v in s.counts.items()]
        if s.drift:
            long_rows += [(s.name, s.format, s.split, "update_energy", k, f"{v:.6f}") for k, v in s.drift.items()]
    notes = [f"- {s.name}: {len(s.skipped)} referent(s) or record(s) of the split skipped and not scored "
             f"({skipped_summary(s.skipped)}); see {BAD_RECORDS}" for s in scores if s.skipped]
    if notes:
        md += ["", *notes]
    write_text_atomic(out / TABLE_MD, "\n".join(md) + "\n")
    write_text_atomic(out / TABLE_CSV, _csv(long_rows))
    keys = ["benchmark"] + sorted({k for s in scores for row in s.per_expression for k in row})
    rows = [[s.name] + [row.get(k, "") for k in keys[1:]] for s in scores for row in s.per_expression]
    write_text_atomic(out / PER_EXPRESSION_CSV, _csv([keys] + rows))
    return out / TABLE_MD, out / TABLE_CSV


def read_scores_csv(path: str | os.PathLike) -> dict[str, float]:
    """A ``scores.csv`` written by ``write_tables`` → the metric names ``BenchmarkScores.metrics``
    logs (``eval/<benchmark>/<metric>``, ReVOS ``eval/<benchmark>/<group>/<metric>``)."""
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                name = _METRIC_NAME[row["metric"]]
                value = float(row["value"])
            except (KeyError, TypeError, ValueError):
                raise EvaluationError(f"{path}: not a scores.csv of salma evaluate (row {row})") from None
            base = f"eval/{row['benchmark']}" if row["group"] == "all" else f"eval/{row['benchmark']}/{row['group']}"
            out[f"{base}/{name}"] = value
    return out


def _csv(rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def log_to_mlflow(
    target: TrackingTarget, metrics: Mapping[str, float], artifacts: Sequence[tuple[Path, str]], tags: Mapping[str, str]
) -> str:
    """Log metrics, tags and artifacts (file, artifact folder); returns the run id logged to."""
    from pipelines.tracking import MlflowTracker

    if target.run_id is not None and not target.new_run:
        tracker = MlflowTracker(tracking_uri=target.uri, run_id=target.run_id)
        created = False
    else:
        run_tags = {"salma.run_kind": "evaluation"}
        if target.run_id is not None:
            run_tags["salma.model_run_id"] = target.run_id
        tracker = MlflowTracker.create_run(tracking_uri=target.uri, experiment=target.experiment,
                                           run_name=target.run_name, artifact_root=_artifact_root(target.uri),
                                           tags=run_tags)
        created = True
    try:
        tracker.set_tags(tags)
        tracker.log_metrics(metrics, step=target.step)
        for path, folder in artifacts:
            tracker.log_artifact(str(path), folder)
    except Exception:
        if created:
            tracker.finish("FAILED")
        raise
    if created:
        tracker.finish("FINISHED")
    logger.info("logged %d metrics to MLflow run %s (%s)", len(metrics), tracker.run_id, target.uri)
    return tracker.run_id


def _artifact_root(uri: str) -> str | None:
    """Beside the SQLite file for a local database (as ``pipelines.tracking`` does); servers keep their own."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        return str(Path(uri[len(prefix):]).parent / "mlartifacts")
    return None


def _artifacts(
    scores: Sequence[BenchmarkScores], pred_dirs: Mapping[str, Path], tables: Sequence[Path]
) -> list[tuple[Path, str]]:
    files = [(t, "eval") for t in tables]
    per_expression = Path(tables[0]).parent / PER_EXPRESSION_CSV
    if per_expression.is_file():
        files.append((per_expression, "eval"))
    for s in scores:
        visuals = pred_dirs[s.name] / VISUALS_DIR
        if visuals.is_dir():
            files += [(png, f"eval/{s.name}/visual_report") for png in sorted(visuals.glob("*.png"))]
    return files


# ------------------------------------------------------------------------------ entry points
def evaluate(
    pred_dir: str | os.PathLike,
    source: SourceConfig | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    tracking: TrackingTarget | None = None,
) -> EvaluationReport:
    """Score one prediction folder, write the tables, log to MLflow when ``tracking`` is given.

    ``source`` defaults to the dataset named in ``pred_dir/run_info.json``.
    """
    pred = Path(pred_dir).expanduser().resolve()
    info = _run_info(pred)
    if source is None:
        if info is None:
            raise EvaluationError(f"{pred} has no {RUN_INFO}; pass --dataset FORMAT:ROOT and --split")
        source = SourceConfig(name=info["name"], format=info["format"], root=info["root"], split=info["split"],
                              options=info.get("options", {}))
    same_data = info is not None and all(info.get(k) == getattr(source, k) for k in ("format", "root", "split"))
    max_samples = info.get("max_samples") if same_data else None
    scores = score_predictions(pred, source, workers=workers, max_samples=max_samples)
    out = Path(out_dir).expanduser().resolve() if out_dir is not None else pred
    out.mkdir(parents=True, exist_ok=True)
    tables = write_tables([scores], out)
    write_skipped(out, [scores])
    metrics = scores.metrics()
    run_id = None
    if tracking is not None:
        tags = {f"salma.eval.{scores.name}.predictions": str(pred)}
        if info is not None:
            tags[f"salma.eval.{scores.name}.model"] = str(info.get("model"))
        run_id = log_to_mlflow(tracking, metrics, _artifacts([scores], {scores.name: pred}, tables), tags)
    _log_summary([scores])
    return EvaluationReport([scores], metrics, str(tables[0]), str(tables[1]), run_id)


def evaluate_model(
    model: Any,
    sources: Iterable[SourceConfig | Sequence[Any]],
    out_dir: str | os.PathLike,
    *,
    num_actors: int = 1,
    run_id: str | None = None,
    settings: EvalConfig | None = None,
    tracking_uri: str | None = None,
    experiment: str = "salma",
    new_run: bool = False,
    step: int = 0,
) -> dict[str, float]:
    """Infer + evaluate a model on several sources; returns the flat metric dict that was logged.

    model: an exported folder, a preset name, or an in-memory ``BuiltSalma`` (predicted afresh
    every call; folders and presets resume). sources: ``SourceConfig``s or tuples
    ``(name, format, root, split[, options])``. Predictions go to ``out_dir/<name>/``, the combined
    tables to ``out_dir``. Logs to MLflow when ``run_id`` or ``tracking_uri`` is given (onto
    ``run_id``, or a new evaluation run; see ``TrackingTarget``). Uses the Ray cluster already
    initialised in this process (``num_actors=0``: no Ray at all).
    """
    from salma.builder import BuiltSalma

    settings = (settings or EvalConfig()).model_copy(update={"num_actors": num_actors})
    settings = EvalConfig.model_validate(settings.model_dump())
    out = Path(out_dir).expanduser().resolve()
    in_memory = isinstance(model, BuiltSalma)
    shipped = model
    if in_memory and num_actors > 0:
        import ray

        ensure_ray()
        shipped = ray.put(ShippedModel.of(model))  # once for every source
    jobs = [(source, out / source.name) for source in map(_as_source, sources)]
    if not jobs:
        raise ValueError("evaluate_model needs at least one source")
    # Every source through one actor pool: each actor loads the model once, not once per source.
    infer_many(shipped, jobs, settings=settings, resume=not in_memory)
    all_scores = [score_predictions(pred, source, workers=settings.metric_workers, max_samples=settings.max_samples)
                  for source, pred in jobs]
    pred_dirs = {source.name: pred for source, pred in jobs}
    tables = write_tables(all_scores, out)
    write_skipped(out, all_scores)
    metrics = {k: v for s in all_scores for k, v in s.metrics().items()}
    if run_id is not None or tracking_uri is not None:
        uri = tracking_uri or _default_tracking_uri("runs")
        target = TrackingTarget(uri=uri, run_id=run_id, new_run=new_run, experiment=experiment, step=step)
        log_to_mlflow(target, metrics, _artifacts(all_scores, pred_dirs, tables), {})
    _log_summary(all_scores)
    return metrics


def _as_source(item: SourceConfig | Sequence[Any]) -> SourceConfig:
    if isinstance(item, SourceConfig):
        source = item.model_copy()
        source.root = str(Path(source.root).expanduser().resolve())
    else:
        name, fmt, root, split, *rest = item
        source = parse_dataset(f"{fmt}:{root}", split=split, options=rest[0] if rest else None, name=name)
    source.name = metric_safe(source.name or default_name(source))
    return source


def _run_info(pred: Path) -> dict[str, Any] | None:
    try:
        return json.loads((pred / RUN_INFO).read_text())
    except FileNotFoundError:
        return None


def last_training_step(uri: str, run_id: str | None) -> int:
    """The last step a training run logged its loss at (0 without a run or a loss curve), so
    that scores logged onto it sit at the end of its curves."""
    if run_id is None:
        return 0
    from mlflow import MlflowClient

    history = MlflowClient(tracking_uri=uri).get_metric_history(run_id, "loss/total")
    return max((m.step for m in history), default=0)


def _default_tracking_uri(workdir: str) -> str:
    from pipelines.tracking import resolve_tracking_uri

    return resolve_tracking_uri(TrackingConfig(), workdir=workdir)


def _log_summary(scores: Sequence[BenchmarkScores]) -> None:
    """One line per benchmark (and group) with its scores: the evaluation phase's progress."""
    from pipelines.progress import phase_line

    for s in scores:
        for group, values in s.groups.items():
            text = ", ".join(f"{k} {v:.2f}" for k, v in values.items())
            phase_line("evaluate", f"{s.name}{'' if group == 'all' else f' {group}'}: {text}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="salma evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=console.DocstringHelp,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--pred", required=True, help="output folder of salma infer (holds results.json)")
    add_dataset_arguments(parser, required=False)
    parser.add_argument("--out", help="where the tables go (default: --pred)")
    parser.add_argument("--workers", type=int, help="processes for video metrics (default: one per CPU)")
    parser.add_argument("--run-id", help="MLflow run that produced the model: scores are logged onto it")
    parser.add_argument("--run", metavar="RUN_DIR",
                        help="training run folder whose MLflow run (and tracking URI) the scores go to")
    parser.add_argument("--new-run", action="store_true",
                        help="log to a new evaluation run tagged salma.model_run_id=RUN_ID instead")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///WORKDIR/mlflow.db")
    parser.add_argument("--workdir", default="runs", help="where the default SQLite tracking database lives")
    parser.add_argument("--experiment", default="salma", help="MLflow experiment of a new evaluation run")
    parser.add_argument("--step", type=int,
                        help="step the metrics are logged at (default: the --run-id run's last training step, else 0)")
    parser.add_argument("--no-tracking", action="store_true", help="write the tables only")
    args = parser.parse_args(argv)
    console.configure()
    source = None
    if args.dataset or args.split:
        if not (args.dataset and args.split):
            parser.error("--dataset and --split go together")
        source = parse_dataset(args.dataset, split=args.split, options=parse_options(args.option), name=args.name)
    tracking = None
    if args.run:
        from pipelines.run_folder import RunFolder

        info = RunFolder.existing(args.run).run_info()
        args.run_id = args.run_id or info.get("mlflow_run_id")
        args.tracking_uri = args.tracking_uri or info.get("tracking_uri")
    if not args.no_tracking:
        uri = args.tracking_uri or _default_tracking_uri(args.workdir)
        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        step = args.step if args.step is not None else last_training_step(uri, args.run_id)
        tracking = TrackingTarget(uri=uri, run_id=args.run_id, new_run=args.new_run, experiment=args.experiment,
                                  step=step)
    report = evaluate(args.pred, source, out_dir=args.out, workers=args.workers, tracking=tracking)
    print(Path(report.table_md).read_text(), end="")
    if report.run_id:
        print(f"logged to MLflow run {report.run_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
