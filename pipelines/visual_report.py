"""Visual report of one prediction: the frame, ground truth, prediction, pre-pass prior and the
map of where the language changed SAM-2's features (the MBA update energy, or the
language-conditioned feature change of a baseline run), side by side in one PNG.

Rendered with matplotlib's object-oriented API on an Agg canvas (no pyplot, no display, no global
state), so it is safe inside Ray actors and headless machines. ``pipelines.infer`` renders the
figures of the first ``eval.visual_samples`` records; ``pipelines.evaluate`` logs them to MLflow.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipelines.overlay import blend

_TARGET = (0.1, 0.85, 0.2)  # green: ground truth
_PREDICTION = (0.15, 0.45, 1.0)  # blue: prediction
_DISTRACTOR = (1.0, 0.2, 0.2)  # red: known distractor


def render_prediction_figure(
    *,
    frame: np.ndarray,
    ground_truth: np.ndarray | None,
    prediction: np.ndarray | None,
    prior: np.ndarray | None,
    energy: np.ndarray | None,
    energy_label: str,
    distractor: np.ndarray | None = None,
    title: str = "",
    dpi: int = 80,
) -> bytes:
    """One row of five panels as PNG bytes.

    frame: (H, W, 3) uint8; ground_truth, prediction, distractor: (H, W) bool or None;
    prior: (h, w) pre-pass probability (what the MBA gate is computed from) or None when MBA is
    off; energy: (h, w) energy map or None. The (h, w) maps are drawn stretched over the frame:
    they cover the whole frame (SAM-2 resizes to a square without keeping the aspect ratio).
    """
    height, width = frame.shape[:2]
    figure = Figure(figsize=(15, 3.6), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 5)
    panels = [
        ("frame", frame, None),
        ("ground truth" + (" (red outline: distractor)" if distractor is not None else ""),
         _overlay(frame, [(ground_truth, _TARGET)]), None),
        ("prediction", _overlay(frame, [(prediction, _PREDICTION)]), None),
        ("pre-pass prior (gate input)", prior, (0.0, 1.0)),
        (energy_label, energy, None),
    ]
    for ax, (name, image, limits) in zip(axes, panels, strict=True):
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if image is None:
            ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
            continue
        if image.ndim == 3:
            ax.imshow(image)
            if name.startswith("ground truth") and distractor is not None and np.any(distractor):
                ax.contour(np.asarray(distractor, dtype=float), levels=[0.5], colors=[_DISTRACTOR], linewidths=1.5)
        else:
            vmin, vmax = limits if limits is not None else (None, None)
            shown = ax.imshow(image, cmap="magma", vmin=vmin, vmax=vmax, extent=(0, width, height, 0))
            figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    if title:
        figure.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _overlay(frame: np.ndarray, layers: list[tuple[np.ndarray | None, tuple[float, float, float]]]) -> np.ndarray:
    """The frame with each mask blended in its colour (``pipelines.overlay.blend``)."""
    return blend(frame, layers)
