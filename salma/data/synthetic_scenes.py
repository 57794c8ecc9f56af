"""Scenes of coloured shapes and the referring expressions that pick one out, for synthetic data.

A ``Scene`` is a background plus 2-5 shapes (circle, square, triangle, diamond, star) in six
clearly separated colours, each moving with a constant velocity (or static), never overlapping.
Shapes are polygons; a frame's masks are those polygons rasterised by pycocotools, and the frame
is painted with exactly those masks, so a polygon written to ``instances.json`` decodes to the
painted pixels bit for bit.

Expressions (``Description``) combine colour, shape, motion, a size superlative (``big`` /
``small``) or a position superlative (``left`` / ``right`` / ``top`` / ``bottom``), or name two
objects at once (``"the two red squares"``). ``denoted`` computes the set of objects an
expression refers to - the objects matching colour, shape and motion, then the superlative among
them, which must win by a clear margin - and generation keeps an expression only when that set is
exactly its target, so every expression is unique in its scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from salma.data.masks import decode_rle, polygons_to_rle

SHAPES = ("circle", "square", "triangle", "diamond", "star")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 65),
    "blue": (45, 85, 220),
    "yellow": (235, 205, 40),
    "purple": (150, 60, 185),
    "orange": (240, 130, 25),
}
# Vivid versions for the salient distractors of the attention-drift split.
VIVID: dict[str, tuple[int, int, int]] = {
    "red": (255, 20, 20),
    "green": (20, 235, 60),
    "blue": (30, 90, 255),
    "yellow": (255, 240, 0),
    "purple": (200, 40, 255),
    "orange": (255, 150, 0),
}
Motion = Literal["up", "down", "left", "right", "static"]
MOTION_VELOCITY = {
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "static": (0.0, 0.0),
}
MOTION_PHRASE = {
    "up": "moving up",
    "down": "moving down",
    "left": "moving to the left",
    "right": "moving to the right",
    "static": "that is not moving",
}
POSITION_SUFFIX = {"left": "on the left", "right": "on the right", "top": "on the top", "bottom": "at the bottom"}

# A superlative must beat the runner-up by this much to be unambiguous.
SIZE_RATIO = 1.5  # area of the biggest / area of the second biggest
POSITION_GAP = 0.15  # fraction of the image side between the two most extreme centres


# Shape sizes as fractions of the shorter image side. The lower bound keeps every object at least
# ~2 cells of the tiny preset's stride-16 map wide: grounding an expression is learned within a
# CPU budget only when objects cover a few cells (objects of ~1 cell stay at chance: docs/experiments/2026-12-02-grounding-with-sam2-from-scratch.md).
OBJECT_SIZE = (0.26, 0.46)
DRIFT_TARGET_SIZE = (0.2, 0.28)  # the drift distractor is 1.6-2x this


@dataclass
class Shape:
    object_id: int
    shape: str
    color: str
    size: float  # side of the bounding square, px
    x: float  # centre at frame 0
    y: float
    vx: float = 0.0  # px per frame
    vy: float = 0.0
    motion: Motion = "static"
    rgb: tuple[int, int, int] = (0, 0, 0)

    def center(self, t: int) -> tuple[float, float]:
        return self.x + self.vx * t, self.y + self.vy * t

    @property
    def radius(self) -> float:
        """Radius of a circle enclosing the shape (the square's corners reach furthest)."""
        return self.size / 2 * math.sqrt(2)

    def polygon(self, t: int) -> list[float]:
        """Flat [x0, y0, x1, y1, ...] in pixel coordinates, rounded so JSON keeps them exactly."""
        cx, cy = self.center(t)
        r = self.size / 2
        match self.shape:
            case "circle":
                points = [(r * math.cos(a), r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 24, endpoint=False)]
            case "square":
                points = [(-r, -r), (r, -r), (r, r), (-r, r)]
            case "triangle":
                points = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
                points = [(px, py + r * 0.2) for px, py in points]  # centre the triangle's bulk
            case "diamond":
                points = [(0, -r), (0.8 * r, 0), (0, r), (-0.8 * r, 0)]
            case "star":
                points = [
                    ((r if k % 2 == 0 else 0.45 * r) * math.cos(-math.pi / 2 + k * math.pi / 5),
                     (r if k % 2 == 0 else 0.45 * r) * math.sin(-math.pi / 2 + k * math.pi / 5))
                    for k in range(10)
                ]
            case _:
                raise ValueError(f"unknown shape {self.shape!r}")
        return [round(v, 2) for px, py in points for v in (cx + px, cy + py)]


@dataclass
class Scene:
    width: int
    height: int
    background: tuple[int, int, int]
    noise: float
    num_frames: int
    objects: list[Shape]
    noise_seed: int
    # attention-drift split: {target object id: salient distractor object id}
    distractor_of: dict[int, int] = field(default_factory=dict)

    def render(self, t: int) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Frame ``t`` as (H, W, 3) uint8 RGB and each object's (H, W) bool mask."""
        rng = np.random.default_rng([self.noise_seed, t])
        image = np.empty((self.height, self.width, 3), dtype=np.float32)
        image[:] = self.background
        if self.noise > 0:
            image += rng.normal(0.0, self.noise, size=image.shape).astype(np.float32)
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        masks = {}
        for obj in self.objects:
            mask = rasterize(obj.polygon(t), self.height, self.width)
            image[mask] = obj.rgb
            masks[obj.object_id] = mask
        return image, masks


def rasterize(polygon: list[float], height: int, width: int) -> np.ndarray:
    """The polygon as pycocotools rasterises it (what a reader decodes from ``instances.json``)."""
    return decode_rle(polygons_to_rle([polygon], height, width))


@dataclass(frozen=True)
class Facts:
    """What an expression can talk about, measured on the rendered frame 0."""

    object_id: int
    shape: str
    color: str
    motion: str
    area: float
    cx: float
    cy: float


def scene_facts(scene: Scene) -> list[Facts]:
    _, masks = scene.render(0)
    facts = []
    for obj in scene.objects:
        ys, xs = np.nonzero(masks[obj.object_id])
        area, cx, cy = float(len(xs)), float(xs.mean()), float(ys.mean())
        facts.append(Facts(obj.object_id, obj.shape, obj.color, obj.motion, area, cx, cy))
    return facts


@dataclass(frozen=True)
class Description:
    color: str | None = None
    shape: str | None = None
    motion: str | None = None
    size: Literal["big", "small"] | None = None
    position: Literal["left", "right", "top", "bottom"] | None = None
    plural: bool = False

    def text(self) -> str:
        noun = self.shape or "one"
        if self.plural:
            noun = noun + "s"
        words = ["the"]
        if self.plural:
            words.append("two")
        if self.size:
            words.append(self.size)
        suffix = []
        if self.position:
            if self.shape is None and self.color is None and self.size is None:
                words.append(self.position)  # "the left one"
            else:
                suffix.append(POSITION_SUFFIX[self.position])
        if self.color:
            words.append(self.color)
        words.append(noun)
        if self.motion:
            suffix.append(MOTION_PHRASE[self.motion])
        return " ".join(words + suffix)


def denoted(description: Description, facts: list[Facts], width: int, height: int) -> frozenset[int]:
    """The objects ``description`` refers to (empty when it is ambiguous or refers to nothing)."""
    base = [
        f for f in facts
        if (description.color is None or f.color == description.color)
        and (description.shape is None or f.shape == description.shape)
        and (description.motion is None or f.motion == description.motion)
    ]
    if description.plural:
        return frozenset(f.object_id for f in base) if len(base) == 2 else frozenset()
    if description.size is None and description.position is None:
        return frozenset(f.object_id for f in base)
    if len(base) < 2:
        return frozenset()  # "the big circle" needs another circle to compare with
    if description.size is not None:
        ranked = sorted(base, key=lambda f: f.area, reverse=description.size == "big")
        first, second = ranked[0].area, ranked[1].area
        clear = max(first, second) >= SIZE_RATIO * min(first, second)
    else:
        key, side, sign = {
            "left": (lambda f: f.cx, width, 1),
            "right": (lambda f: f.cx, width, -1),
            "top": (lambda f: f.cy, height, 1),
            "bottom": (lambda f: f.cy, height, -1),
        }[description.position]
        ranked = sorted(base, key=lambda f: sign * key(f))
        clear = abs(key(ranked[1]) - key(ranked[0])) >= POSITION_GAP * side
    return frozenset({ranked[0].object_id}) if clear else frozenset()


def image_candidates(target: Facts) -> list[Description]:
    base = Description(color=target.color, shape=target.shape)
    out = [
        base,
        Description(shape=target.shape),
        Description(color=target.color),
        replace(base, size="big"),
        replace(base, size="small"),
        Description(shape=target.shape, size="big"),
        Description(shape=target.shape, size="small"),
        Description(size="big"),
        Description(size="small"),
    ]
    for position in ("left", "right", "top", "bottom"):
        out += [
            Description(position=position),
            replace(base, position=position),
            Description(shape=target.shape, position=position),
        ]
    return out


def video_candidates(target: Facts) -> list[Description]:
    base = Description(color=target.color, shape=target.shape)
    return [
        base,
        Description(shape=target.shape),
        Description(color=target.color),
        Description(motion=target.motion),
        Description(shape=target.shape, motion=target.motion),
        replace(base, motion=target.motion),
        Description(color=target.color, motion=target.motion),
        Description(shape=target.shape, size="big"),
        Description(shape=target.shape, size="small"),
    ]


def unique_expressions(
    candidates: list[Description], target_ids: frozenset[int], facts: list[Facts], width: int, height: int
) -> list[str]:
    """Texts of the candidates that denote exactly ``target_ids``, without duplicates."""
    texts: list[str] = []
    for description in candidates:
        if denoted(description, facts, width, height) == target_ids:
            text = description.text()
            if text not in texts:
                texts.append(text)
    return texts


def plural_expressions(facts: list[Facts], width: int, height: int) -> list[tuple[frozenset[int], str]]:
    """(object ids, text) for expressions naming exactly two objects ("the two red squares")."""
    out = []
    seen: set[frozenset[int]] = set()
    for f in facts:
        for description in (
            Description(shape=f.shape, plural=True),
            Description(color=f.color, shape=f.shape, plural=True),
            Description(color=f.color, plural=True),
        ):
            ids = denoted(description, facts, width, height)
            if len(ids) == 2 and ids not in seen:
                seen.add(ids)
                out.append((ids, description.text()))
    return out


def sample_scene(
    rng: np.random.Generator,
    *,
    num_frames: int = 1,
    min_objects: int = 2,
    max_objects: int = 5,
    drift: bool = False,
    noise_seed: int = 0,
) -> Scene:
    """A random non-square scene whose objects never overlap on any frame.

    With ``drift`` the first object is a muted target and the second a salient distractor next to
    it (1.6-2x larger, vivid colour, the same velocity so it stays close): ``scene.distractor_of``.
    """
    width, height = (int(v) for v in rng.integers(96, 193, size=2))
    while width == height:
        width = int(rng.integers(96, 193))
    gray = float(rng.uniform(95, 165))
    background = tuple(int(np.clip(gray + rng.uniform(-12, 12), 0, 255)) for _ in range(3))
    noise = float(rng.uniform(5, 14)) if rng.random() < 0.5 else 0.0
    side = min(width, height)
    for _attempt in range(200):
        count = int(rng.integers(min_objects, max_objects + 1))
        # Crowded draws (large shapes, long travel) shrink the shapes a little every 50 attempts.
        scale = 0.85 ** (_attempt // 50)
        objects = _place_objects(rng, count, width, height, side * scale, num_frames, background, drift)
        if objects is not None:
            scene = Scene(width, height, background, noise, num_frames, objects, noise_seed)
            if drift:
                scene.distractor_of = {objects[0].object_id: objects[1].object_id}
            return scene
        max_objects = max(min_objects, max_objects - 1) if _attempt % 20 == 19 else max_objects
    raise RuntimeError("could not place non-overlapping shapes; the scene is too crowded")


def _place_objects(rng, count, width, height, side, num_frames, background, drift) -> list[Shape] | None:
    objects: list[Shape] = []
    for index in range(count):
        if drift and index == 1:
            target = objects[0]
            obj = _drift_distractor(rng, target, width, height, side, num_frames)
        else:
            size_range = DRIFT_TARGET_SIZE if drift and index == 0 else OBJECT_SIZE
            obj = _random_shape(rng, index, width, height, side, num_frames, size_range)
            if drift and index == 0:
                muted = np.asarray(COLORS[obj.color], dtype=np.float32) * 0.7 + np.asarray(background) * 0.3
                obj.rgb = tuple(int(v) for v in np.rint(muted))
        if obj is None or not _fits(obj, width, height, num_frames) or _collides(obj, objects, num_frames):
            return None
        objects.append(obj)
    return objects


def _random_shape(rng, index, width, height, side, num_frames, size_range) -> Shape:
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    size = float(rng.uniform(*size_range)) * side
    motion: Motion = "static"
    if num_frames > 1 and rng.random() < 0.65:
        motion = ("up", "down", "left", "right")[int(rng.integers(4))]
    dx, dy = MOTION_VELOCITY[motion]
    # Travel 25-45% of the side over the clip: clearly moving, and still inside the frame.
    speed = float(rng.uniform(0.25, 0.45)) * side / max(num_frames - 1, 1) if motion != "static" else 0.0
    vx, vy = dx * speed, dy * speed
    travel_x, travel_y = vx * (num_frames - 1), vy * (num_frames - 1)
    r = size / 2 * math.sqrt(2)
    x_lo, x_hi = r - min(travel_x, 0), width - r - max(travel_x, 0)
    y_lo, y_hi = r - min(travel_y, 0), height - r - max(travel_y, 0)
    x = float(rng.uniform(x_lo, x_hi)) if x_hi > x_lo else width / 2
    y = float(rng.uniform(y_lo, y_hi)) if y_hi > y_lo else height / 2
    return Shape(index, shape, color, size, x, y, vx, vy, motion, COLORS[color])


def _drift_distractor(rng, target: Shape, width, height, side, num_frames) -> Shape:
    """Bigger, vivid, right next to the target and moving with it."""
    shape = target.shape if rng.random() < 0.5 else SHAPES[int(rng.integers(len(SHAPES)))]
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    size = target.size * float(rng.uniform(1.6, 2.0))
    gap = (target.radius + size / 2 * math.sqrt(2)) * 1.08
    angle = float(rng.uniform(0, 2 * math.pi))
    x, y = target.x + gap * math.cos(angle), target.y + gap * math.sin(angle)
    return Shape(1, shape, color, size, x, y, target.vx, target.vy, target.motion, VIVID[color])


def _fits(obj: Shape, width: int, height: int, num_frames: int) -> bool:
    r = obj.radius
    for t in (0, num_frames - 1):
        cx, cy = obj.center(t)
        if cx - r < 0 or cy - r < 0 or cx + r > width or cy + r > height:
            return False
    return True


def _collides(obj: Shape, others: list[Shape], num_frames: int) -> bool:
    for other in others:
        for t in range(num_frames):
            (ax, ay), (bx, by) = obj.center(t), other.center(t)
            if math.hypot(ax - bx, ay - by) < (obj.radius + other.radius) * 1.04:
                return True
    return False
