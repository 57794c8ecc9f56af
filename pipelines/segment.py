"""``salma segment``: one image, video file or frame folder and one expression → the answer, the
mask(s) as PNG and a picture of the result. The predictor alone: no Ray, no MLflow.

    salma segment photo.jpg "the dog on the left" [--model runs/<run>/export] [--out overlay.png]
    salma segment clip.mp4 "the running dog" --out dog.mp4          (an overlay video)
    salma segment frames/ "the running dog" --out dog_frames/        (a folder of overlay frames)

Writes, for an image, ``--out`` (default ``<input name>_overlay.png``: the masks drawn over the
image) and ``<out stem>_mask.png`` (0/255, the size of the image; ``_mask1.png``, ... for a
second and further ``[SEG]`` of the answer). For a video, ``--out`` is an overlay video when it
ends in ``.mp4`` / ``.avi`` (default ``<input name>_overlay.mp4``), otherwise a folder of overlay
frames; the masks go to ``<out stem>_mask/<frame>.png`` (``_mask1/``, ... for further objects),
frames named as in the folder or by number for a video file.

``--model`` is an exported model folder (``salma export``; ``salma quickstart`` prints its own)
or a preset name (``tiny``: random weights); without it, the newest ``runs/*/export``.
An untrained or barely trained model may answer without ``[SEG]`` and so segment nothing:
``--teacher-force`` makes it answer "It is [SEG]." and always gives a mask.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.config_errors import ConfigError
from pipelines.overlay import draw_overlay
from pipelines.prediction_folder import write_png_atomic
from salma.data.decode import load_frames, probe_image_size, probe_video
from salma.data.own_data import FRAME_SUFFIXES, VIDEO_SUFFIXES
from salma.data.record import SampleRecord

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_OUT_SUFFIXES = {".mp4": "mp4v", ".avi": "MJPG"}
DEFAULT_FPS = 10.0


@dataclass
class SegmentResult:
    answer: str
    overlay: str  # the overlay image, video or frame folder
    masks: list[str]  # one PNG (image) or one folder of PNGs (video) per [SEG]
    frames: int
    key_frames: list[int] = field(default_factory=list)


@dataclass
class MediaInput:
    """The frames of the input, their names (for mask files) and the frame rate (videos)."""

    frames: list[np.ndarray]  # (H, W, 3) uint8 RGB each
    names: list[str]
    video: bool
    fps: float = DEFAULT_FPS


def read_media(path: str | Path, *, frame_stride: int = 1, max_frames: int | None = None) -> MediaInput:
    """An image file, a video file or a folder of frames, decoded (``salma.data.decode``)."""
    path = Path(path).expanduser()
    if frame_stride < 1 or (max_frames is not None and max_frames < 1):
        raise ConfigError("--frame-stride and --max-frames must be >= 1")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)[::frame_stride][:max_frames]
        if not files:
            raise ConfigError(f"{path} holds no frames ({', '.join(FRAME_SUFFIXES)})")
        _check_one_size(path, files)
        record = SampleRecord(source="segment", split="", sample_id=str(path), media="video", height=0, width=0,
                              frames=[str(p) for p in files])
        return MediaInput(load_frames(record, range(len(files))), [p.stem for p in files], video=True)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        record = SampleRecord(source="segment", split="", sample_id=str(path), media="image", height=0, width=0,
                              frames=[str(path)])
        return MediaInput(load_frames(record, [0]), [path.stem], video=False)
    if suffix in VIDEO_SUFFIXES:
        count, _, _ = probe_video(path)
        indices = list(range(0, count, frame_stride))[:max_frames]
        record = SampleRecord(source="segment", split="", sample_id=str(path), media="video", height=0, width=0,
                              video_path=str(path), frame_indices=indices)
        return MediaInput(load_frames(record, range(len(indices))), [f"{i:05d}" for i in indices], video=True,
                          fps=_fps(path) / frame_stride)
    raise ConfigError(f"{path}: not an image ({', '.join(IMAGE_SUFFIXES)}), a video ({', '.join(VIDEO_SUFFIXES)}) "
                      "or a folder of frames")


def _check_one_size(folder: Path, files: list[Path]) -> None:
    """The frames of a folder are one video's: they must share one size (read from the headers,
    before anything is decoded). A folder of separate photos is the usual cause."""
    first = probe_image_size(files[0])
    for file in files[1:]:
        size = probe_image_size(file)
        if size != first:
            raise ConfigError(
                f"{file}: {size[1]}x{size[0]} pixels, but {files[0].name} is {first[1]}x{first[0]}: a folder is "
                f"read as the frames of one video, which share one size. To segment separate pictures, give "
                f"them one at a time, or list them in a JSON Lines file for salma infer --dataset "
                f"own_data:{folder} (docs/inference.md)"
            )


def default_model(workdir: str | Path = "runs") -> str:
    """The newest exported model under ``workdir`` (``<run>/export``)."""
    from salma.export import CONFIG_FILE

    exports = sorted(Path(workdir).glob(f"*/export/{CONFIG_FILE}"), key=lambda p: p.stat().st_mtime)
    if not exports:
        raise ConfigError(f"no --model given and no exported model under {workdir}/ (salma quickstart writes one); "
                          "pass --model DIR (salma export) or --model tiny (random weights)")
    return str(exports[-1].parent)


def load_predictor(model: str, *, num_key_frames: int = 5, max_new_tokens: int = 32):
    """A ``SalmaPredictor`` for an exported folder or a preset name (``pipelines.infer.load_model``)."""
    from pipelines.infer import load_model
    from salma.predictor import SalmaPredictor

    return SalmaPredictor(load_model(model), num_key_frames=num_key_frames, max_new_tokens=max_new_tokens)


def segment(
    predictor, media: MediaInput, expression: str, out: str | Path, *, generate: bool = True
) -> SegmentResult:
    """Predict and write the overlay and masks (module docstring)."""
    if not expression.strip():
        raise ConfigError("the expression is empty; say what to segment, e.g. \"the dog on the left\"")
    check_out(Path(out), media.video)
    frames = media.frames
    prediction = predictor.segment(frames[0] if not media.video else np.stack(frames), expression, generate=generate)
    objects = [np.asarray(m, dtype=bool).reshape(len(frames), *frames[0].shape[:2]) for m in prediction.masks]  # (T, H, W) each
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    mask_paths = []
    for k, masks in enumerate(objects):
        base = out.with_name(f"{out.stem if out.suffix else out.name}_mask{k if k else ''}")
        if media.video:
            for name, mask in zip(media.names, masks):
                write_png_atomic(base / f"{name}.png", mask)
            mask_paths.append(str(base))
        else:
            write_png_atomic(base.with_suffix(".png"), masks[0])
            mask_paths.append(str(base.with_suffix(".png")))
    overlays = [draw_overlay(frame, [masks[t] for masks in objects]) for t, frame in enumerate(frames)]
    _write_overlay(out, overlays, media)
    return SegmentResult(prediction.answer, str(out), mask_paths, len(frames), list(prediction.key_frames))


def check_out(out: Path, video: bool) -> None:
    """An image's overlay is a picture PIL writes (``IMAGE_SUFFIXES``); a video's is a video
    file (``VIDEO_OUT_SUFFIXES``) or a folder (any other name). Checked before the model runs."""
    if not video and out.suffix.lower() not in IMAGE_SUFFIXES:
        raise ConfigError(f"--out {out}: an image's overlay is a picture ({', '.join(IMAGE_SUFFIXES)}), "
                          f"e.g. --out {out.with_suffix('.png')}")


def _write_overlay(out: Path, overlays: list[np.ndarray], media: MediaInput) -> None:
    from PIL import Image

    if not media.video:
        Image.fromarray(overlays[0]).save(out)
        return
    codec = VIDEO_OUT_SUFFIXES.get(out.suffix.lower())
    if codec is None:
        out.mkdir(parents=True, exist_ok=True)
        for name, frame in zip(media.names, overlays):
            Image.fromarray(frame).save(out / f"{name}.jpg", quality=92)
        return
    import cv2

    height, width = overlays[0].shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*codec), media.fps, (width, height))
    if not writer.isOpened():
        raise ConfigError(f"OpenCV cannot write {out.suffix} here; pass --out FOLDER for overlay frames instead")
    try:
        for frame in overlays:
            writer.write(np.ascontiguousarray(frame[:, :, ::-1]))  # RGB -> BGR
    finally:
        writer.release()


def _fps(path: Path) -> float:
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        fps = float(capture.get(cv2.CAP_PROP_FPS))
    finally:
        capture.release()
    return fps if fps > 0 else DEFAULT_FPS


def default_out(source: Path, video: bool) -> Path:
    stem = source.name.rstrip("/") if source.is_dir() else source.stem
    return Path(f"{stem}_overlay" + (".mp4" if video else ".png"))


def main(argv: list[str] | None = None) -> int:
    from pipelines import console

    parser = argparse.ArgumentParser(prog="salma segment", description=__doc__.split("\n\n")[0],
                                     formatter_class=console.DocstringHelp,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("input", help="an image, a video file or a folder of frames")
    parser.add_argument("expression", help='what to segment, e.g. "the dog on the left"')
    parser.add_argument("--model", help="exported model folder or preset name (default: newest runs/*/export)")
    parser.add_argument("--out", help="overlay image, overlay video (.mp4/.avi) or folder of overlay frames")
    parser.add_argument("--teacher-force", action="store_true",
                        help='answer "It is [SEG]." instead of generating (always one mask)')
    parser.add_argument("--num-key-frames", type=int, default=5, help="video frames the language model sees")
    parser.add_argument("--frame-stride", type=int, default=1, help="videos: keep every n-th frame")
    parser.add_argument("--max-frames", type=int, help="videos: at most this many frames")
    args = parser.parse_args(argv)
    console.configure()
    media = read_media(args.input, frame_stride=args.frame_stride, max_frames=args.max_frames)
    out = Path(args.out) if args.out else default_out(Path(args.input), media.video)
    check_out(out, media.video)
    predictor = load_predictor(args.model or default_model(), num_key_frames=args.num_key_frames)
    result = segment(predictor, media, args.expression, out, generate=not args.teacher_force)
    print(f"answer: {result.answer}")
    if not result.masks:
        print("the answer has no [SEG]: nothing segmented (an untrained model? try --teacher-force)")
    for path in result.masks:
        print(f"mask:    {path}")
    print(f"overlay: {result.overlay}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
