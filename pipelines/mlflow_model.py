"""An exported SALMA model as an MLflow model (pyfunc flavour), logged on the run that trained it.

``log_exported_model(export_dir, tracking_uri=…, run_id=…)`` logs the folder written by
``salma export`` as the run's model ``model`` (``runs:/<run_id>/model``), with a signature, an
input example and the versions of the packages it runs with; ``register_as`` also registers it
in the MLflow model registry (``models:/<name>/<version>``). ``salma export`` and
``salma quickstart`` call it for the run the checkpoint belongs to.

``predict`` takes a table with one row per (picture, expression):

- ``expression`` (string): what to segment;
- ``image`` (binary: the bytes of a PNG / JPEG file; base64 in JSON), or
- ``frames`` (array of binary: the frames of a video, in order);

and returns one row per input row: ``answer`` (the model's text), ``num_masks`` (the number of
``[SEG]`` in the answer) and ``masks`` (a JSON list of COCO RLE ``{"size": [h, w], "counts"}``
of the first ``[SEG]``'s mask, one per frame: one for an image; empty when the answer has no
``[SEG]``). ``salma.data.masks.decode_rle`` (or pycocotools) turns an RLE back into an array.
Param ``generate`` (default true): false teacher-forces "It is [SEG]." (always a mask).

The model's code is the installed ``salma`` package: load or serve it from an environment where
this project is installed (``mlflow models serve -m runs:/<id>/model --env-manager local``).
"""

from __future__ import annotations

import io
import json
import logging
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

MODEL_NAME = "model"
PICTURES_PER_BATCH = 4  # pictures of one request segmented together (SalmaPredictor.segment_records)
_ARTIFACT = "salma_export"
_REQUIREMENTS = ("torch", "transformers", "sam2", "peft", "safetensors", "tokenizers", "pycocotools", "pillow",
                 "numpy", "pandas", "opencv-python-headless", "hydra-core", "iopath", "pydantic", "mlflow")


class SalmaPyfuncModel(mlflow.pyfunc.PythonModel):
    """The pyfunc wrapper: loads the exported folder once, predicts row by row."""

    def load_context(self, context) -> None:
        from salma.predictor import SalmaPredictor

        self.predictor = SalmaPredictor.from_pretrained(context.artifacts[_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from salma.data.masks import encode_mask

        generate = bool((params or {}).get("generate", True))
        table = model_input.reset_index(drop=True)
        # Rows about the same picture are segmented together: it is decoded and encoded once;
        # up to PICTURES_PER_BATCH pictures share the encoders' and the language model's batches.
        groups: dict[str, list[int]] = {}
        for index, row in table.iterrows():
            groups.setdefault(_media_key(row, index), []).append(index)
        rows: list[dict[str, Any]] = [{} for _ in range(len(table))]
        pictures = list(groups.values())
        for start in range(0, len(pictures), PICTURES_PER_BATCH):  # a few pictures asked together
            batch = pictures[start : start + PICTURES_PER_BATCH]
            asked = [(_media_of(table.iloc[indices[0]], indices[0]),
                      [str(table.iloc[i]["expression"]) for i in indices]) for indices in batch]
            for indices, predictions in zip(batch, self.predictor.segment_records(asked, generate=generate)):
                for i, prediction in zip(indices, predictions):
                    masks = []
                    if prediction.masks:
                        first = np.asarray(prediction.masks[0], dtype=bool)
                        masks = [encode_mask(m) for m in (first[None] if first.ndim == 2 else first)]
                    rows[i] = {"answer": prediction.answer, "num_masks": len(prediction.masks),
                               "masks": json.dumps(masks)}
        return pd.DataFrame(rows, columns=["answer", "num_masks", "masks"])


def _media_of(row: pd.Series, index: int) -> np.ndarray:
    """(H, W, 3) for ``image``, (T, H, W, 3) for ``frames``; one of them must be given."""
    image = row.get("image")
    frames = row.get("frames")
    if _given(image):
        return _decode(image, f"row {index}: image")
    if _given(frames):
        return np.stack([_decode(f, f"row {index}: frame {t}") for t, f in enumerate(frames)])
    raise ValueError(f"row {index}: give an image (bytes of an image file) or frames (a list of them)")


def _media_key(row: pd.Series, index: int) -> str:
    """A digest of the row's picture (the image's bytes, or every frame's), equal for rows
    about the same picture."""
    import hashlib

    digest = hashlib.sha256()
    image, frames = row.get("image"), row.get("frames")
    parts = [image] if _given(image) else list(frames) if _given(frames) else None
    if parts is None:
        raise ValueError(f"row {index}: give an image (bytes of an image file) or frames (a list of them)")
    digest.update(b"image" if _given(image) else b"frames")
    for part in parts:
        data = part.encode() if isinstance(part, str) else bytes(part)
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def _given(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float):
        return value == value  # NaN: a missing cell
    return len(value) > 0


def _decode(data: Any, what: str) -> np.ndarray:
    """Bytes of an image file (base64 text is decoded first) → (H, W, 3) uint8 RGB."""
    import base64

    from PIL import Image, UnidentifiedImageError

    if isinstance(data, str):
        data = base64.b64decode(data)
    try:
        with Image.open(io.BytesIO(bytes(data))) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ValueError(f"{what} is not a readable image file: {err}") from None


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([
        ColSpec("string", "expression"),
        ColSpec("binary", "image", required=False),
        ColSpec(Array("binary"), "frames", required=False),
    ])
    outputs = Schema([ColSpec("string", "answer"), ColSpec("long", "num_masks"), ColSpec("string", "masks")])
    return ModelSignature(inputs=inputs, outputs=outputs, params=ParamSchema([ParamSpec("generate", "boolean", True)]))


def input_example() -> pd.DataFrame:
    """One small image with a red square and an expression about it."""
    from PIL import Image

    pixels = np.zeros((32, 48, 3), np.uint8)
    pixels[8:24, 12:28] = (220, 30, 30)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return pd.DataFrame({"expression": ["the red square"], "image": [buffer.getvalue()]})


def requirements() -> list[str]:
    """The packages the model runs with, at their installed versions (``salma`` itself is not
    on an index: see the module docstring)."""
    out = []
    for name in _REQUIREMENTS:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def log_exported_model(
    export_dir: str | Path, *, tracking_uri: str, run_id: str, register_as: str | None = None
) -> str:
    """Log ``export_dir`` as the MLflow model ``model`` of run ``run_id``; returns its
    ``runs:/`` URI. ``register_as`` registers it under that name too."""
    from salma.export import CONFIG_FILE

    export_dir = Path(export_dir)
    if not (export_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(2, f"not an exported SALMA model (no {CONFIG_FILE})", str(export_dir))
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=SalmaPyfuncModel(),
            artifacts={_ARTIFACT: str(export_dir)},
            signature=signature(),
            input_example=input_example(),
            pip_requirements=requirements(),
            registered_model_name=register_as,
        )
    uri = f"runs:/{run_id}/{MODEL_NAME}"
    logger.info("logged %s as %s%s", export_dir, uri, f" (registered as {register_as})" if register_as else "")
    return uri
