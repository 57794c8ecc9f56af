"""Convert a released Sa2VA folder (remote-code ``Sa2VAChatModel``) into a SALMA export with
Mask-Biased Attention off: the Sa2VA baseline, loadable by ``SalmaPredictor.from_pretrained``,
``salma infer`` / ``salma evaluate`` and usable as ``model.init_from``.

    salma convert sa2va checkpoints/Sa2VA-1B --out checkpoints/Sa2VA-1B-salma

The release holds the InternVL2.5 tensors (converted as ``salma.internvl_conversion`` does, into
``<out>/mllm``), ``grounding_encoder.sam2_model.*`` (SAM-2, SAM-2.0 Hiera-L in the releases) and
``text_hidden_fcs.{0,2}`` (Linear, ReLU, Linear: the ``[SEG]`` projector). SAM-2 goes to the
``sam2`` package's names: Sa2VA's conversion script renamed the memory fuser's layer scales
``gamma`` to ``g_weight`` (``name_map = {'.gamma': '.g_weight'}``) and the rename is undone;
every other name is the package's. ``text_hidden_fcs`` becomes ``seg_projector``. Sa2VA's own
tokenizer, with its ``[SEG] <p> </p> <vp> </vp>`` ids, is kept.

Sa2VA decodes with SAM-2's object-presence rule (``_forward_sam_heads`` empties a mask whose
object score is <= 0), so the export sets ``sam.suppress_no_object: true``. The SAM-2
architecture defaults to the release's (``sam2_hiera_l``, SAM-2.0); ``sam_config`` and
``sam_overrides`` (Hydra overrides, as ``model.sam.overrides`` takes them; ``++model.image_size=N``
sets ``sam.image_size``) describe any other, e.g. a tiny replica. As for InternVL, the plan is
checked from the headers first (every tensor mapped, every target produced once with its shape)
and the tensors are then streamed shard by shard, dtypes kept.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from salma.checkpoint_layout import TensorSpec, stored_tensors
from salma.config import SalmaConfig, parse_sam_package_config, resolve_model_config, sam_package_config
from salma.internvl_conversion import (
    ConversionError,
    ConversionSummary,
    Target,
    check_targets,
    describe_plan,
    finish_summary,
    fresh_staging,
    open_release,
    plan_internvl,
    plan_targets,
    publish,
    release_image_token_id,
    split_wqkv,
    stream_convert,
    write_native_folder,
)

SAM_PREFIX = "grounding_encoder.sam2_model."
PROJECTOR = re.compile(r"text_hidden_fcs\.(0|2)\.(weight|bias)")
RELEASE_SAM = ("2.0", "large")  # sam2_hiera_l.yaml: what Sa2VA's SAM2 wrapper builds
SEG_TOKEN = "[SEG]"


def sam_package_name(release_name: str) -> str:
    """A Sa2VA SAM-2 tensor name (prefix stripped) → the ``sam2`` package's name."""
    return release_name[: -len(".g_weight")] + ".gamma" if release_name.endswith(".g_weight") else release_name


def _salma_target(name: str, shape: tuple[int, ...]) -> list[Target] | None:
    if name.startswith(SAM_PREFIX):
        return [Target("salma", "sam.sam." + sam_package_name(name[len(SAM_PREFIX) :]), name, shape)]
    if match := PROJECTOR.fullmatch(name):
        return [Target("salma", f"seg_projector.{match.group(1)}.{match.group(2)}", name, shape)]
    return None


def split_sam_overrides(overrides: list[str]) -> tuple[list[str], int]:
    """Hydra overrides minus ``model.image_size`` (which becomes ``sam.image_size``; default 1024)."""
    rest, size = [], 1024
    for item in overrides:
        key, _, value = item.lstrip("+").partition("=")
        if key == "model.image_size":
            try:
                size = int(value)
            except ValueError:
                raise ConversionError(f"--sam-override {item!r}: the image size must be an integer") from None
        else:
            rest.append(item)
    return rest, size


def sa2va_salma_config(release: dict, *, version: str, hiera: str, overrides: list[str], image_size: int) -> SalmaConfig:
    """The SALMA config of the converted folder: the release's MLLM geometry and architecture,
    its SAM-2, MBA and LoRA off."""
    vision, llm = release["vision_config"], release["llm_config"]
    tile = release.get("force_image_size") or vision.get("image_size", 224)
    return resolve_model_config(
        {
            "preset": "salma-1b",
            "mllm": {
                "path": "mllm",
                "tokenizer": "mllm",
                "tile_size": tile,
                "min_tiles": release.get("min_dynamic_patch", 1),
                "max_tiles": release.get("max_dynamic_patch", 6),
                "use_thumbnail": bool(release.get("use_thumbnail", False)),
                "downsample_ratio": release.get("downsample_ratio", 0.5),
                "vision": {
                    "hidden_size": vision["hidden_size"],
                    "num_hidden_layers": vision["num_hidden_layers"],
                    "num_attention_heads": vision["num_attention_heads"],
                    "intermediate_size": vision["intermediate_size"],
                    "patch_size": vision.get("patch_size", 14),
                    "attention_bias": bool(vision.get("qkv_bias", False)),
                    "norm_type": vision.get("norm_type", "rms_norm"),
                    "use_qk_norm": bool(vision.get("qk_normalization", True)),
                },
                "text": {
                    "hidden_size": llm["hidden_size"],
                    "num_hidden_layers": llm["num_hidden_layers"],
                    "num_attention_heads": llm["num_attention_heads"],
                    "num_key_value_heads": llm.get("num_key_value_heads", llm["num_attention_heads"]),
                    "intermediate_size": llm["intermediate_size"],
                    "vocab_size": llm["vocab_size"],
                    "max_position_embeddings": llm.get("max_position_embeddings", 32768),
                    "rope_theta": float(llm.get("rope_theta", 10000.0)),
                    "tie_word_embeddings": False,
                },
            },
            "sam": {"version": version, "hiera": hiera, "image_size": image_size, "overrides": overrides,
                    "suppress_no_object": True},  # fmt: skip
            "mba": {"enabled": False},
            "lora": {"enabled": False},
        }
    )


def convert_sa2va(
    source: str | Path,
    out: str | Path,
    *,
    sam_config: str | None = None,
    sam_overrides: list[str] | None = None,
    tokenizer: str | Path | None = None,
) -> ConversionSummary:
    """Convert a released Sa2VA folder into a SALMA export at ``out`` (see the module docstring)."""
    from salma.export import MLLM_DIR, MODEL_CARD_FILE, WEIGHTS_FILE, write_export_config
    from salma.model_card import write_model_card
    from salma.sam_adapter import sam2_state_shapes

    started = time.perf_counter()
    source, out = Path(source), Path(out)
    release, where = open_release(source, out, "sa2va")
    version, hiera = parse_sam_package_config(sam_config) if sam_config else RELEASE_SAM
    overrides, image_size = split_sam_overrides(list(sam_overrides or []))
    stored = stored_tensors(source)
    mllm_part = {k: v for k, v in stored.items() if not k.startswith(SAM_PREFIX) and not k.startswith("text_hidden_fcs.")}
    rest = {k: v for k, v in stored.items() if k not in mllm_part}

    staging = fresh_staging(out)
    mllm_dir = staging / MLLM_DIR
    image_token_id = release_image_token_id(source, mllm_dir, tokenizer=None if tokenizer is None else Path(tokenizer))
    _check_seg_token(mllm_dir)
    plan = plan_internvl(release, mllm_part, image_token_id=image_token_id, where=where)
    salma_targets = plan_targets(rest, _salma_target, source=where)
    hidden = release["llm_config"]["hidden_size"]
    sam_shapes = sam2_state_shapes(config_name=sam_package_config(version, hiera), overrides=overrides, image_size=image_size)
    prompt_dim = sam_shapes["sam_prompt_encoder.no_mask_embed.weight"][-1]
    expected_salma = {"sam.sam." + k: v for k, v in sam_shapes.items()}
    expected_salma.update({
        "seg_projector.0.weight": (hidden, hidden), "seg_projector.0.bias": (hidden,),
        "seg_projector.2.weight": (prompt_dim, hidden), "seg_projector.2.bias": (prompt_dim,),
    })  # fmt: skip
    mllm_expected = {t.name: t.shape for t in plan.targets}  # checked against the native class by plan_internvl
    check_targets(plan.targets + salma_targets, {"mllm": mllm_expected, "salma": expected_salma}, source=where)
    config = sa2va_salma_config(release, version=version, hiera=hiera, overrides=overrides, image_size=image_size)

    summary = describe_plan(source, out, stored, plan)
    summary.source_tensors, summary.source_parameters = len(stored), sum(s.numel for s in stored.values())
    summary.notes.append(f"SAM-2: {sam_package_config(version, hiera)} ({len([t for t in salma_targets if t.name.startswith('sam.')])} tensors, "
                         "g_weight -> gamma)")  # fmt: skip
    summary.notes.append("text_hidden_fcs -> seg_projector; Mask-Biased Attention off (the Sa2VA baseline)")
    write_native_folder(mllm_dir, plan)
    stream_convert(
        source, stored, plan.targets + salma_targets,
        sharded_outputs={"mllm": mllm_dir}, single_outputs={"salma": staging / WEIGHTS_FILE},
        wqkv=lambda t, which, groups: split_wqkv(t, which, groups, plan.text.head_dim), summary=summary,
    )  # fmt: skip
    finish_summary(summary, started)
    dtype = _dominant_dtype(stored)
    write_export_config(staging, config, dtype=dtype)
    write_model_card(
        staging / MODEL_CARD_FILE, config=config, dtype=dtype, scores={},
        source=f"Converted from the Sa2VA release `{source.name}` by `salma convert sa2va` (weights unchanged).",
    )  # fmt: skip
    publish(staging, out)
    return summary


def _check_seg_token(folder: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    if tokenizer.convert_ids_to_tokens(tokenizer.convert_tokens_to_ids(SEG_TOKEN)) != SEG_TOKEN:
        raise ConversionError(f"{folder}: the release's tokenizer has no {SEG_TOKEN} token; it is not Sa2VA's")


def _dominant_dtype(stored: dict[str, TensorSpec]):
    from collections import Counter

    return Counter(spec.dtype for spec in stored.values()).most_common(1)[0][0]
