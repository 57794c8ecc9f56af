"""``salma demo``: a Gradio app — upload an image or a short video, type an expression, see the
mask drawn over it and the model's answer.

    pip install -e ".[demo]"          # Gradio is an optional extra
    salma demo [--model runs/<run>/export] [--port 7860]

``--model`` is an exported model folder or a preset name, as for ``salma segment`` (default: the
newest ``runs/*/export``). The app listens on 127.0.0.1 only (it has no authentication). The
examples under each tab are scenes of the synthetic data: ``data/synthetic`` when the
quickstart has written it, else a few scenes generated at start-up. "Answer 'It is [SEG].'"
(teacher forcing) always gives a mask, also from a model that does not generate ``[SEG]`` yet.
Each upload runs the same predictor as ``salma segment`` (no Ray); one request at a time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.segment import MediaInput, default_model, load_predictor, read_media, segment
from salma.data.errors import BadRecordError

INSTALL = 'pip install -e ".[demo]"'
MAX_VIDEO_FRAMES = 48


class MissingExtraError(ImportError):
    """The optional ``demo`` extra (Gradio) is not installed; the message names the command."""


def require_gradio():
    try:
        import gradio
    except ImportError as err:
        raise MissingExtraError(f"salma demo needs Gradio, an optional extra: {INSTALL} (from the project folder); "
                                f"import failed: {err}") from None
    return gradio


class DemoModel:
    """The two handlers behind the app: one image or one video and an expression."""

    def __init__(self, predictor, workdir: Path):
        self.predictor = predictor
        self.workdir = workdir

    def segment_image(self, image: np.ndarray | None, expression: str, teacher_force: bool) -> tuple[Any, Any, str]:
        """(overlay (H, W, 3), mask (H, W) 0/255, answer)."""
        if image is None:
            return None, None, "upload an image first"
        image = np.asarray(image, dtype=np.uint8)[..., :3]
        media = MediaInput([image], ["image"], video=False)
        out = Path(tempfile.mkdtemp(dir=self.workdir)) / "overlay.png"
        result = segment(self.predictor, media, expression, out, generate=not teacher_force)
        from PIL import Image

        mask = np.asarray(Image.open(result.masks[0])) if result.masks else np.zeros(image.shape[:2], np.uint8)
        return np.asarray(Image.open(result.overlay)), mask, _answer_text(result.answer, bool(result.masks))

    def segment_video(self, video: str | None, expression: str, teacher_force: bool) -> tuple[Any, str]:
        """(overlay video path, answer); at most ``MAX_VIDEO_FRAMES`` frames are segmented."""
        if not video:
            return None, "upload a video first"
        try:
            media = read_media(video, max_frames=MAX_VIDEO_FRAMES)
        except BadRecordError as err:  # shown in the app instead of Gradio's bare "Error"
            return None, f"cannot read this video: {err}"
        out = Path(tempfile.mkdtemp(dir=self.workdir)) / "overlay.mp4"
        result = segment(self.predictor, media, expression, out, generate=not teacher_force)
        return str(out), _answer_text(result.answer, bool(result.masks))


def _answer_text(answer: str, segmented: bool) -> str:
    return answer if segmented else f"{answer}\n(no [SEG] in the answer: nothing segmented; try teacher forcing)"


def synthetic_examples(data_dir: str | Path = "data/synthetic", *, limit: int = 3) -> list[list[str]]:
    """[image path, expression] pairs from the synthetic RefCOCO val split (written to a
    temporary folder first when ``data_dir`` has none)."""
    from salma.data.sources import read_source

    root = Path(data_dir) / "refer" / "refcoco"
    if not (root / "instances.json").is_file():
        from salma.data.synthetic import write_synthetic

        root = Path(tempfile.mkdtemp(prefix="salma-demo-")) / "synthetic"
        write_synthetic(root, seed=0, num_images=6, num_videos=1)
        root = root / "refer" / "refcoco"
    records = read_source("refcoco", root, "val")[:limit]
    return [[r.frames[0], r.referents[0].expressions[0]] for r in records]


def build_app(model: DemoModel, examples: list[list[str]]):
    """The Gradio Blocks app; its two endpoints are ``/segment_image`` and ``/segment_video``."""
    gr = require_gradio()
    with gr.Blocks(title="SALMA", analytics_enabled=False) as app:
        gr.Markdown("# SALMA — language-guided segmentation\nUpload a picture or a short video and say what to segment.")
        with gr.Tab("Image"):
            with gr.Row():
                image = gr.Image(label="image", type="numpy")
                overlay = gr.Image(label="result", type="numpy", format="png")
                mask = gr.Image(label="mask", type="numpy", image_mode="L", format="png")  # lossless: 0 or 255
            expression = gr.Textbox(label="expression", placeholder="the red circle on the left")
            forced = gr.Checkbox(label="answer 'It is [SEG].' (always a mask)", value=False)
            answer = gr.Textbox(label="answer")
            go = gr.Button("Segment", variant="primary")
            go.click(model.segment_image, [image, expression, forced], [overlay, mask, answer], api_name="segment_image")
            if examples:
                gr.Examples(examples=examples, inputs=[image, expression], label="synthetic scenes")
        with gr.Tab("Video"):
            with gr.Row():
                video = gr.Video(label=f"video (first {MAX_VIDEO_FRAMES} frames)")
                video_overlay = gr.Video(label="result")
            video_expression = gr.Textbox(label="expression", placeholder="the square moving right")
            video_forced = gr.Checkbox(label="answer 'It is [SEG].' (always a mask)", value=False)
            video_answer = gr.Textbox(label="answer")
            video_go = gr.Button("Segment", variant="primary")
            video_go.click(model.segment_video, [video, video_expression, video_forced], [video_overlay, video_answer],
                           api_name="segment_video")
    app.queue(default_concurrency_limit=1)
    return app


def main(argv: list[str] | None = None) -> int:
    from pipelines import console

    parser = argparse.ArgumentParser(prog="salma demo", description=__doc__.split("\n\n")[0],
                                     formatter_class=console.DocstringHelp,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model", help="exported model folder or preset name (default: newest runs/*/export)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--data", default="data/synthetic", help="synthetic data for the examples")
    args = parser.parse_args(argv)
    console.configure()
    require_gradio()
    predictor = load_predictor(args.model or default_model())
    workdir = Path(tempfile.mkdtemp(prefix="salma-demo-out-"))
    app = build_app(DemoModel(predictor, workdir), synthetic_examples(args.data))
    print(f"SALMA demo on http://127.0.0.1:{args.port} (Ctrl-C stops it)")
    app.launch(server_name="127.0.0.1", server_port=args.port, share=False, quiet=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
