"""Decoding a record's frames and masks, with every failure reported as ``BadRecordError``.

- ``load_frames(record, frame_positions)``: (H, W, 3) uint8 RGB arrays for the given positions of
  ``record.frames`` (or of ``record.frame_indices`` for records stored as an mp4).
- ``decode_masks(referent, frame_positions, height, width)``: a (T, H, W) bool array; a ``None``
  entry (object absent on that frame) decodes to an empty mask.

Failures name the file and a fixed reason (see ``salma.data.errors``): a missing frame or image
file, a truncated or unreadable image, a video that cannot be opened or has no frames, a frame
index past the end of the video, a frame whose size disagrees with the record, an RLE whose size
disagrees with the frame, a malformed RLE.

Images in unusual modes are converted, not rejected: grayscale, palette, RGBA / LA (alpha dropped),
CMYK and 16-bit grayscale (scaled from 0..65535 to 0..255) all come back as 8-bit RGB. EXIF
orientation is *not* applied: COCO-style annotations are drawn on the stored pixel grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from salma.data.errors import BadRecordError
from salma.data.masks import decode_rle
from salma.data.record import Referent, SampleRecord

# Pillow's exceptions for a file it can open but not decode (truncated data raises OSError).
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def load_frames(record: SampleRecord, frame_positions: Sequence[int]) -> list[np.ndarray]:
    """Decode the frames at ``frame_positions`` (indices into the record's frame list)."""
    positions = list(frame_positions)
    if record.video_path is not None:
        indices = record.frame_indices or []
        _check_positions(positions, len(indices), record.sample_id)
        frames = _read_video_frames(record.video_path, [indices[p] for p in positions])
        paths = [record.video_path] * len(frames)
    else:
        _check_positions(positions, len(record.frames), record.sample_id)
        missing_reason = "missing image file" if record.media == "image" else "missing frame file"
        paths = [record.frames[p] for p in positions]
        frames = [read_image_rgb(path, missing_reason=missing_reason) for path in paths]
    if record.height > 0 and record.width > 0:
        for path, frame in zip(paths, frames):
            if frame.shape[:2] != (record.height, record.width):
                raise BadRecordError(
                    path,
                    "frame size disagrees with record",
                    sample_id=record.sample_id,
                    detail=f"frame {list(frame.shape[:2])}, record {[record.height, record.width]}",
                )
    return frames


def decode_masks(
    referent: Referent, frame_positions: Sequence[int], height: int, width: int
) -> np.ndarray:
    """(T, H, W) bool masks of ``referent`` at ``frame_positions``."""
    mask_file = str(referent.meta.get("mask_file", f"<masks of referent {referent.ref_id}>"))
    positions = list(frame_positions)
    _check_positions(positions, len(referent.masks), referent.ref_id)
    out = np.zeros((len(positions), height, width), dtype=bool)  # (T, H, W)
    for i, p in enumerate(positions):
        rle = referent.masks[p]
        if rle is None:
            continue
        size = [int(s) for s in rle.get("size", [])] if isinstance(rle, dict) else []
        if size != [height, width]:
            raise BadRecordError(
                mask_file,
                "mask size disagrees with frame",
                sample_id=referent.ref_id,
                detail=f"frame position {p}: mask size {size}, frame size {[height, width]}",
            )
        try:
            out[i] = decode_rle(rle)
        except ValueError as exc:
            raise BadRecordError(
                mask_file, "malformed mask RLE", sample_id=referent.ref_id, detail=f"frame position {p}: {exc}"
            ) from exc
    return out


def read_image_rgb(path: str | Path, *, missing_reason: str = "missing image file") -> np.ndarray:
    """One image file as an (H, W, 3) uint8 RGB array (unusual modes converted)."""
    path = Path(path)
    if not path.is_file():
        raise BadRecordError(path, missing_reason)
    try:
        with Image.open(path) as image:
            image.load()
            return _to_rgb8(image)
    except _IMAGE_ERRORS as exc:
        raise BadRecordError(path, "truncated or unreadable image", detail=str(exc)) from exc


def probe_image_size(path: str | Path, *, missing_reason: str = "missing frame file") -> tuple[int, int]:
    """(height, width) from the image header, without decoding the pixels."""
    path = Path(path)
    if not path.is_file():
        raise BadRecordError(path, missing_reason)
    try:
        with Image.open(path) as image:
            width, height = image.size
    except _IMAGE_ERRORS as exc:
        raise BadRecordError(path, "truncated or unreadable image", detail=str(exc)) from exc
    return height, width


def probe_video(path: str | Path) -> tuple[int, int, int]:
    """(frame count, height, width) from the container; the count is the container's claim."""
    path = Path(path)
    if not path.is_file():
        raise BadRecordError(path, "missing video file")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise BadRecordError(path, "unreadable video")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        capture.release()
    if count <= 0:
        raise BadRecordError(path, "video has no frames")
    return count, height, width


def _read_video_frames(path: str, indices: Sequence[int]) -> list[np.ndarray]:
    """Decode the given frame numbers of an mp4, reading sequentially.

    Sequential reading (rather than seeking with CAP_PROP_POS_FRAMES) is slower for long videos
    but exact: seeking in H.264 lands on key frames with some OpenCV backends.
    """
    video = Path(path)
    if not video.is_file():
        raise BadRecordError(video, "missing video file")
    wanted = set(indices)
    last = max(indices) if indices else -1
    decoded: dict[int, np.ndarray] = {}
    capture = cv2.VideoCapture(str(video))
    try:
        if not capture.isOpened():
            raise BadRecordError(video, "unreadable video")
        count = 0
        while count <= last:
            ok, frame = capture.read()
            if not ok:
                break
            if count in wanted:
                decoded[count] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            count += 1
    finally:
        capture.release()
    if count == 0 and indices:
        raise BadRecordError(video, "video has no frames")
    for index in indices:
        if index not in decoded:
            raise BadRecordError(
                video, "frame index past the end of the video", detail=f"index {index}, decoded {count} frames"
            )
    return [decoded[i] for i in indices]


def _to_rgb8(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        gray = np.asarray(image).astype(np.int64)
        if mode in _SIXTEEN_BIT_MODES or gray.max(initial=0) > 255:
            # 16-bit data: map 0..65535 onto 0..255 (65535 / 257 = 255).
            gray = np.rint(np.clip(gray, 0, 65535) / 257.0)
        gray8 = np.clip(gray, 0, 255).astype(np.uint8)
        return np.repeat(gray8[:, :, None], 3, axis=2)
    if mode == "F":
        gray = np.asarray(image, dtype=np.float64)
        if gray.max(initial=0.0) <= 1.0:
            gray = gray * 255.0
        gray8 = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
        return np.repeat(gray8[:, :, None], 3, axis=2)
    if mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def _check_positions(positions: Sequence[int], length: int, owner: str) -> None:
    for p in positions:
        if not 0 <= p < length:
            raise ValueError(f"frame position {p} is outside 0..{length - 1} of {owner!r}")
