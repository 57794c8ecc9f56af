"""Clutter-lure scenes: salient *non-object* texture in the background, for the attention-drift
benchmark.

Mask-Biased Attention gates the language by a class-agnostic "where are objects" prior. What the
gate can suppress is a salient response *outside* every object: background texture that looks like
what the sentence asks for. An object distractor (the ``drift`` split) is covered by the prior as
much as the target, so it cannot test that; clutter can. A clutter-lure scene is:

- 2-3 objects (the shapes of ``salma.data.synthetic_scenes``), each spanning at least
  ``MIN_OBJECT_CELLS`` cells of the tiny preset's stride-16 map in both directions (its
  128 px SAM-2 input gives an 8 x 8 map, ``FEATURE_CELLS``; frames are resized to that square
  without keeping the aspect ratio, so a cell is ``width / 8`` px wide and ``height / 8`` px high);
- 1-2 clutter regions painted on the background *under* the objects, each one of
  ``CLUTTER_KINDS``: ``stripes`` (a patch of parallel bars), ``checker_band`` (a checkerboard band
  along one border of the frame) or ``speckle`` (a patch of 2 x 2 px dots), in a vivid colour;
- one target, referred to by an expression that names its colour ("the red circle", "the red
  one", "the red one moving up").

In a **lure** scene the clutter carries the colour the expression names; in a **control** scene
it has another colour (never the target's). Everything else is drawn the same way, so the two
splits differ only in whether the clutter matches the sentence. The clutter is static (it is
background) and is never an annotation: a reader, SAM-2 pre-training and the mask losses see it
as background. Its region (the patch or band, gaps included, minus the objects painted over it)
is recorded per frame in the ``clutter.json`` sidecar (``salma.data.clutter``) for the drift
measures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from salma.data.synthetic_scenes import (
    COLORS,
    MOTION_VELOCITY,
    SHAPES,
    VIVID,
    Description,
    Scene,
    Shape,
    rasterize,
    scene_facts,
    unique_expressions,
)

ClutterKind = Literal["stripes", "checker_band", "speckle"]
CLUTTER_KINDS: tuple[ClutterKind, ...] = ("stripes", "checker_band", "speckle")
FEATURE_CELLS = 8  # the tiny preset: 128 px SAM-2 input / stride 16
MIN_OBJECT_CELLS = 2.5
# The clutter must stay salient once objects cover part of it: at least this fraction of the frame.
MIN_CLUTTER_FRACTION = 0.06


@dataclass(frozen=True)
class Clutter:
    """One clutter region. ``box`` = (x0, y0, x1, y1) in pixels (exclusive ends)."""

    kind: ClutterKind
    color: str
    box: tuple[int, int, int, int]
    period: int  # stripe / checker cell period in px
    angle: int  # stripes: 0, 45, 90 or 135 degrees
    seed: int  # speckle pattern

    def region(self, height: int, width: int) -> np.ndarray:
        """(H, W) bool: the clutter's extent (patch or band, its gaps included)."""
        out = np.zeros((height, width), dtype=bool)
        x0, y0, x1, y1 = self.box
        out[y0:y1, x0:x1] = True
        return out

    def paint_mask(self, height: int, width: int) -> np.ndarray:
        """(H, W) bool: the pixels painted in the clutter colour."""
        ys, xs = np.mgrid[0:height, 0:width]
        match self.kind:
            case "stripes":
                theta = math.radians(self.angle)
                u = xs * math.cos(theta) + ys * math.sin(theta)
                pattern = (np.floor(u / (self.period / 2)) % 2) == 0
            case "checker_band":
                pattern = ((xs // self.period) + (ys // self.period)) % 2 == 0
            case "speckle":
                rng = np.random.default_rng(self.seed)
                dots = rng.random(((height + 1) // 2, (width + 1) // 2)) < 0.45
                pattern = np.repeat(np.repeat(dots, 2, axis=0), 2, axis=1)[:height, :width]
            case _:
                raise ValueError(f"unknown clutter kind {self.kind!r}; choose one of {CLUTTER_KINDS}")
        return pattern & self.region(height, width)


@dataclass
class ClutterScene:
    """A scene, its clutter (painted under the objects), the target and its expressions."""

    scene: Scene
    clutter: list[Clutter]
    lure: bool
    target_id: int
    expressions: list[str]

    def render(self, t: int) -> tuple[np.ndarray, dict[int, np.ndarray], np.ndarray]:
        """Frame ``t``: (H, W, 3) uint8 RGB, each object's (H, W) mask, and the (H, W) clutter
        region not covered by an object."""
        image, masks = self.scene.render(t)
        h, w = image.shape[:2]
        objects = np.zeros((h, w), dtype=bool)
        for mask in masks.values():
            objects |= mask
        region = np.zeros((h, w), dtype=bool)
        for item in self.clutter:
            paint = item.paint_mask(h, w) & ~objects
            image[paint] = VIVID[item.color]
            region |= item.region(h, w)
        return image, masks, region & ~objects


def sample_clutter_scene(
    rng: np.random.Generator, *, lure: bool, num_frames: int = 1, noise_seed: int = 0
) -> ClutterScene:
    """A random clutter-lure (``lure=True``) or control scene; retries until every constraint
    (object size, no overlap, a unique colour-naming expression, visible clutter) holds."""
    for _ in range(200):
        width, height = (int(v) for v in rng.integers(128, 177, size=2))
        if max(width, height) > 1.25 * min(width, height) or width == height:
            continue
        gray = float(rng.uniform(95, 165))
        background = tuple(int(np.clip(gray + rng.uniform(-12, 12), 0, 255)) for _ in range(3))
        noise = float(rng.uniform(5, 14)) if rng.random() < 0.5 else 0.0
        count = int(rng.integers(2, 4)) if num_frames == 1 else 2
        objects = _place(rng, count, width, height, num_frames)
        if objects is None:
            continue
        scene = Scene(width, height, background, noise, num_frames, objects, noise_seed)
        target = objects[0]
        facts = scene_facts(scene)
        texts = unique_expressions(_colour_candidates(target, num_frames > 1), frozenset({0}), facts, width, height)
        if not texts:
            continue
        others = [c for c in COLORS if c != target.color]
        color = target.color if lure else others[int(rng.integers(len(others)))]
        clutter = [_sample_clutter(rng, color, width, height) for _ in range(int(rng.integers(1, 3)))]
        result = ClutterScene(scene, clutter, lure, target.object_id, texts)
        _, _, region = result.render(0)
        if region.mean() < MIN_CLUTTER_FRACTION:
            continue
        return result
    raise RuntimeError("could not generate a clutter-lure scene; the constraints are too tight")


def _colour_candidates(target: Shape, video: bool) -> list[Description]:
    """Expressions that name the target's colour (the attribute the clutter may carry)."""
    out = [Description(color=target.color, shape=target.shape), Description(color=target.color)]
    if video:
        out.append(Description(color=target.color, motion=target.motion))
    return out


def _place(rng, count: int, width: int, height: int, num_frames: int) -> list[Shape] | None:
    """``count`` shapes whose bounding squares never overlap on any frame, each at least
    ``MIN_OBJECT_CELLS`` cells across."""
    cell_w, cell_h = width / FEATURE_CELLS, height / FEATURE_CELLS
    objects: list[Shape] = []
    for index in range(count):
        for _ in range(40):
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            color = list(COLORS)[int(rng.integers(len(COLORS)))]
            size = float(rng.uniform(0.32, 0.42)) * max(width, height)
            motion = "static"
            if num_frames > 1 and rng.random() < 0.65:
                motion = ("up", "down", "left", "right")[int(rng.integers(4))]
            dx, dy = MOTION_VELOCITY[motion]
            # Shorter travel than the other splits (10-20 % of the side): the objects are larger.
            speed = float(rng.uniform(0.1, 0.2)) * min(width, height) / max(num_frames - 1, 1)
            vx, vy = (dx * speed, dy * speed) if motion != "static" else (0.0, 0.0)
            half = size / 2  # every shape's polygon lies inside its bounding square
            tx, ty = vx * (num_frames - 1), vy * (num_frames - 1)
            x_lo, x_hi = half - min(tx, 0), width - half - max(tx, 0)
            y_lo, y_hi = half - min(ty, 0), height - half - max(ty, 0)
            if x_hi <= x_lo or y_hi <= y_lo:
                continue
            x, y = float(rng.uniform(x_lo, x_hi)), float(rng.uniform(y_lo, y_hi))
            obj = Shape(index, shape, color, size, x, y, vx, vy, motion, COLORS[color])
            if _overlaps(obj, objects, num_frames) or not _large_enough(obj, height, width, cell_w, cell_h):
                continue
            objects.append(obj)
            break
        else:
            return None
    return objects


def _large_enough(obj: Shape, height: int, width: int, cell_w: float, cell_h: float) -> bool:
    ys, xs = np.nonzero(rasterize(obj.polygon(0), height, width))
    if len(xs) == 0:
        return False
    return (xs.max() - xs.min() + 1) >= MIN_OBJECT_CELLS * cell_w and (ys.max() - ys.min() + 1) >= MIN_OBJECT_CELLS * cell_h


def _overlaps(obj: Shape, others: list[Shape], num_frames: int, gap: float = 2.0) -> bool:
    """Whether the bounding squares (plus ``gap`` px) of ``obj`` and another shape meet on a frame."""
    for other in others:
        reach = (obj.size + other.size) / 2 + gap
        for t in range(num_frames):
            (ax, ay), (bx, by) = obj.center(t), other.center(t)
            if abs(ax - bx) < reach and abs(ay - by) < reach:
                return True
    return False


def _sample_clutter(rng, color: str, width: int, height: int) -> Clutter:
    kind = CLUTTER_KINDS[int(rng.integers(len(CLUTTER_KINDS)))]
    period = int(rng.integers(6, 11))
    if kind == "checker_band":
        side = ("top", "bottom", "left", "right")[int(rng.integers(4))]
        thickness = float(rng.uniform(0.2, 0.28))
        th, tw = int(round(thickness * height)), int(round(thickness * width))
        box = {
            "top": (0, 0, width, th), "bottom": (0, height - th, width, height),
            "left": (0, 0, tw, height), "right": (width - tw, 0, width, height),
        }[side]
    else:
        bw, bh = int(rng.uniform(0.3, 0.5) * width), int(rng.uniform(0.3, 0.5) * height)
        x0, y0 = int(rng.integers(0, width - bw + 1)), int(rng.integers(0, height - bh + 1))
        box = (x0, y0, x0 + bw, y0 + bh)
    return Clutter(kind, color, box, period, int(rng.choice([0, 45, 90, 135])), int(rng.integers(2**31)))
