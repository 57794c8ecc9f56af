"""Tiny presets and random batches for tests, benchmarks and notebooks (no files, no downloads)."""

from __future__ import annotations

import random

import numpy as np

from salma.batch import SalmaBatch
from salma.config import SalmaConfig, tiny_config
from salma.conversation import Round, referring_round
from salma.data.examples import ImageGeometry, collate, encode_example

_COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}


def tiny_salma_config(**overrides) -> SalmaConfig:
    """The tiny preset's config; keyword overrides are applied as top-level field updates."""
    config = tiny_config()
    return config.model_copy(update=overrides) if overrides else config


def random_sample(
    rng: np.random.Generator, *, num_frames: int, num_objects: int, height: int = 96, width: int = 128
) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Frames of noise with coloured rectangles, their masks (O, F, H, W) and expressions."""
    frames = [rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8) for _ in range(num_frames)]
    masks = np.zeros((num_objects, num_frames, height, width), dtype=bool)
    names = list(_COLOURS)
    expressions = []
    for o in range(num_objects):
        colour = names[o % len(names)]
        expressions.append(f"the {colour} square")
        for t in range(num_frames):
            y, x = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
            h, w = int(rng.integers(height // 6, height // 2)), int(rng.integers(width // 6, width // 2))
            masks[o, t, y : y + h, x : x + w] = True
            frames[t][y : y + h, x : x + w] = _COLOURS[colour]
    return frames, masks, expressions


def random_batch(
    config: SalmaConfig, batch_size: int = 2, num_frames: int = 2, *, num_objects: int = 2, seed: int = 0, tokenizer=None
) -> SalmaBatch:
    """A batch of random video samples built through the same ``encode_example``/``collate`` path
    as real data. ``num_frames=1`` gives image samples (dynamic tiling)."""
    from salma.tokenizer import load_tokenizer

    tokenizer = tokenizer or load_tokenizer(config.mllm.tokenizer or config.mllm.path or "tiny")
    rng = np.random.default_rng(seed)
    text_rng = random.Random(seed)
    media = "image" if num_frames == 1 else "video"
    geometry = ImageGeometry.from_config(config)
    examples = []
    for _ in range(batch_size):
        frames, masks, expressions = random_sample(rng, num_frames=num_frames, num_objects=num_objects)
        rounds = [referring_round(e, media=media, rng=text_rng) for e in expressions]
        if not rounds:  # a question-answer sample with no mask to produce
            rounds = [Round(prefix=f"How many squares are in this {media}?", answer="two.")]
        examples.append(
            encode_example(frames=frames, masks=masks, rounds=rounds, media=media, tokenizer=tokenizer, geometry=geometry)
        )
    return collate(examples, pad_token_id=tokenizer.pad_token_id)
