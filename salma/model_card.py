"""The model card (``README.md``) of an exported folder, as the Hugging Face hub displays it:
front matter, what the model is, how to load it, its evaluation scores, and the resolved config."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from salma.config import SalmaConfig

_SAM_SIZES = {"tiny": "T", "small": "S", "base_plus": "B+", "large": "L"}


def describe_model(config: SalmaConfig) -> str:
    """One line: the MLLM, the SAM-2 generation and size, MBA on or off."""
    sam = f"SAM-{config.sam.version} Hiera-{_SAM_SIZES[config.sam.hiera]}"
    if config.mba.enabled:
        kind = f"SALMA (Mask-Biased Attention, {config.mba.mode} mode)"
    else:
        kind = "the Sa2VA baseline (Mask-Biased Attention off)"
    return f"{kind}: InternVL MLLM + {sam}, preset {config.preset!r}"


def model_card(
    *, config: SalmaConfig, dtype: torch.dtype, scores: dict[str, float], source: str | None = None
) -> str:
    """The card's markdown. ``scores`` maps metric names (``eval/<benchmark>/<metric>``) to
    values in percent; ``source`` says what was exported (a checkpoint, a converted release)."""
    lines = [
        "---",
        "library_name: salma",
        "pipeline_tag: image-segmentation",
        "tags:",
        "- referring-segmentation",
        "- video-object-segmentation",
        "- sam2",
        "- internvl",
        "---",
        "",
        "# SALMA model",
        "",
        describe_model(config) + ".",
        "",
        "## Use",
        "",
        "```python",
        "from salma import SalmaPredictor",
        "",
        'predictor = SalmaPredictor.from_pretrained("<this folder or its hub id>")',
        'prediction = predictor.segment(image, "the person on the left")  # image: (H, W, 3) uint8',
        "```",
        "",
        "Loading never runs code from the repository: the MLLM is transformers' native InternVL,",
        "SAM-2 comes from the `sam2` package, and every weight is loaded strictly.",
        "",
        "## Files",
        "",
        "- `config.json`: the model config (`salma`), LoRA merged",
        "- `mllm/`: the InternVL MLLM and its tokenizer, loadable by transformers alone",
        "- `salma.safetensors`: SAM-2, the `[SEG]` projector"
        + (", the expression projector and Mask-Biased Attention" if config.mba.enabled else ""),
        f"- weights in `{str(dtype).removeprefix('torch.')}`",
        "",
        "## Evaluation",
        "",
    ]
    if scores:
        lines += ["| benchmark | metric | score |", "|---|---|---|"]
        for name in sorted(scores):
            parts = name.split("/")
            benchmark = "/".join(parts[1:-1]) if len(parts) > 2 else parts[0]
            lines.append(f"| {benchmark} | {parts[-1]} | {scores[name]:.2f} |")
    else:
        lines.append("No evaluation scores were recorded for this model.")
    if source:
        lines += ["", "## Provenance", "", source]
    lines += [
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps(config.model_dump(mode="json"), indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(path: str | Path, **kwargs) -> Path:
    path = Path(path)
    path.write_text(model_card(**kwargs))
    return path
