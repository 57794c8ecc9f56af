"""Conversation templates and their tokenization (Qwen chat format, no system prompt).

A training sample becomes a multi-round chat: round i asks about referent i and its answer holds
one ``[SEG]``. The image (all its tiles) or the video (one tile per frame) comes once, at the start
of the first user turn. Labels cover only answer tokens and the ``<|im_end|>`` that closes them.

The question/answer templates follow the style of the public referring-segmentation recipes
(LISA, Sa2VA): several phrasings, drawn at random during training. An expression that is itself a
question ("which shape is closest to ...?") is used as the question, followed by a request for
the mask, as the public reasoning-segmentation recipes do.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from salma.tokenizer import IM_END, IM_START, IMG_CONTEXT, IMG_END, IMG_START, SEG_TOKEN

IMAGE_QUESTIONS = (
    "Can you segment {expr} in this image?",
    "Please segment {expr} in this image.",
    "What is {expr} in this image? Please respond with segmentation mask.",
    "What is {expr} in this image? Please output segmentation mask.",
)
VIDEO_QUESTIONS = (
    "Can you segment {expr} in this video?",
    "Please segment {expr} in this video.",
    "What is {expr} in this video? Please respond with segmentation mask.",
    "What is {expr} in this video? Please output segmentation mask.",
)
REASONING_SUFFIX = " Please respond with segmentation mask."
ANSWERS = (
    f"It is {SEG_TOKEN}.",
    f"Sure, {SEG_TOKEN}.",
    f"Sure, it is {SEG_TOKEN}.",
    f"Sure, the segmentation result is {SEG_TOKEN}.",
)


@dataclass
class Round:
    """One user/assistant exchange. ``expression`` (if any) sits between prefix and suffix so its
    token positions can be recovered for the MBA language tokens; ``answer`` is None for the
    final round of an inference prompt."""

    prefix: str
    expression: str = ""
    suffix: str = ""
    answer: str | None = None


@dataclass
class EncodedConversation:
    input_ids: list[int]
    labels: list[int]
    expression_positions: list[list[int]] = field(default_factory=list)


def referring_round(expression: str, *, media: str, rng: random.Random | None, answer: bool = True) -> Round:
    """A question about one referent; ``rng=None`` uses the first template (evaluation)."""
    expression = expression.strip()
    pick = (lambda seq: seq[0]) if rng is None else rng.choice
    answer_text = pick(ANSWERS) if answer else None
    if expression.endswith("?"):
        return Round(prefix="", expression=expression, suffix=REASONING_SUFFIX, answer=answer_text)
    template = pick(VIDEO_QUESTIONS if media == "video" else IMAGE_QUESTIONS)
    prefix, suffix = template.split("{expr}")
    return Round(prefix=prefix, expression=expression, suffix=suffix, answer=answer_text)


def image_placeholder(tokens_per_image: list[int]) -> str:
    """``<img><IMG_CONTEXT>…</img>`` for each image (a tiled image counts its tiles together; a
    video has one image per frame)."""
    return "".join(IMG_START + IMG_CONTEXT * n + IMG_END for n in tokens_per_image) + "\n"


def encode_rounds(
    tokenizer: PreTrainedTokenizerBase,
    rounds: list[Round],
    *,
    tokens_per_image: list[int],
) -> EncodedConversation:
    """Tokenize a chat piece by piece so labels and expression positions are exact.

    A last round without an answer ends the text with the assistant header: a generation prompt.
    Pieces are tokenized separately and concatenated; with a BPE tokenizer this can split a word
    differently at a piece boundary than whole-string tokenization would, which only matters for
    reproducing a public model's prompt byte for byte, not for training.
    """
    ids: list[int] = []
    labels: list[int] = []
    positions: list[list[int]] = []

    def add(text: str, *, supervised: bool = False) -> list[int]:
        if not text:
            return []
        piece = tokenizer(text, add_special_tokens=False).input_ids
        start = len(ids)
        ids.extend(piece)
        labels.extend(piece if supervised else [-100] * len(piece))
        return list(range(start, len(ids)))

    for i, rnd in enumerate(rounds):
        add(f"{IM_START}user\n")
        if i == 0 and tokens_per_image:
            add(image_placeholder(tokens_per_image))
        add(rnd.prefix)
        positions.append(add(rnd.expression))
        add(rnd.suffix)
        add(f"{IM_END}\n{IM_START}assistant\n")
        if rnd.answer is not None:
            add(rnd.answer + IM_END, supervised=True)
            add("\n")
    return EncodedConversation(input_ids=ids, labels=labels, expression_positions=positions)
