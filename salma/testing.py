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
    from salma.tokenizer import load_tokenizer, tokenizer_name

    tokenizer = tokenizer or load_tokenizer(tokenizer_name(config))
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


def write_own_data_example(
    root, *, num_images: int = 6, num_videos: int = 1, with_masks: bool = True, seed: int = 0,
    height: int = 96, width: int = 128, video_frames: int = 4,
) -> dict[str, int]:
    """A small folder in the own-data format (``salma.data.own_data``), as a user would lay it
    out: ``photos/*.jpg`` with ``masks/*.png``, one frame folder per video under ``clips/`` with
    a PNG per frame, and ``train.jsonl`` / ``val.jsonl`` (the last third of the images and the
    videos go to val). Two coloured squares per image, one line (with a mask unless
    ``with_masks`` is false) per square. Returns the number of lines written per split."""
    import json
    from pathlib import Path

    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    lines: dict[str, list[dict]] = {"train": [], "val": []}
    cut = num_images - max(1, num_images // 3)
    for i in range(num_images + num_videos):
        video = i >= num_images
        count = video_frames if video else 1
        frames, masks, expressions = random_sample(rng, num_frames=count, num_objects=2, height=height, width=width)
        split = "val" if (i >= cut and not video) or (video and i == num_images + num_videos - 1 and num_videos > 1) else "train"
        name = f"clip{i:02d}" if video else f"photo{i:02d}"
        for o, expression in enumerate(expressions):
            if video:
                media = {"video": f"clips/{name}/"}
                mask: object = f"masks/{name}_{o}/"
                for t in range(count):
                    Image.fromarray(frames[t]).save(_mkdir(root / "clips" / name) / f"{t:05d}.jpg", quality=95)
                    Image.fromarray(masks[o, t].astype(np.uint8) * 255).save(_mkdir(root / "masks" / f"{name}_{o}") / f"{t:05d}.png")
            else:
                media = {"image": f"photos/{name}.png"}
                Image.fromarray(frames[0]).save(_mkdir(root / "photos") / f"{name}.png")
                mask = f"masks/{name}_{o}.png"
                Image.fromarray(masks[o, 0].astype(np.uint8) * 255).save(_mkdir(root / "masks") / f"{name}_{o}.png")
            line = {**media, "expression": expression}
            if with_masks:
                line["mask"] = mask
            lines[split].append(line)
    for split, entries in lines.items():
        (root / f"{split}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    return {split: len(entries) for split, entries in lines.items()}


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path
