"""The one place where the typed config becomes modules (``build_salma``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import InternVLForConditionalGeneration, PreTrainedTokenizerBase

from salma.checkpoint_layout import CheckpointLayoutError, require_native_internvl
from salma.config import SalmaConfig, SamConfig
from salma.export import MLLM_DIR, init_from_folder, load_init_weights
from salma.hub import resolve_model_folder
from salma.mask_biased_attention import MaskBiasedAttention
from salma.mllm import SalmaMLLM, internvl_config, load_native_internvl
from salma.model import SalmaModel
from salma.sam_adapter import SamAdapter, build_sam2_model
from salma.tokenizer import IMG_CONTEXT, SEG_TOKEN, load_tokenizer, tokenizer_name

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltSalma:
    """A built model and what it was built from.

    ``SalmaModel`` holds parameters and the forward only. The tokenizer (prompts in, answers out)
    and the resolved config (image geometry, what an export records) belong to whoever builds
    and runs the model: ``build_salma`` and ``load_exported`` return them together, and the
    predictor, the export and the pipelines take them from here.
    """

    model: SalmaModel
    tokenizer: PreTrainedTokenizerBase
    config: SalmaConfig


def build_internvl(
    config: SalmaConfig, tokenizer, *, device: str | torch.device = "cpu", path: str | None = None
) -> InternVLForConditionalGeneration:
    """Pretrained weights from ``path`` (default ``mllm.path``; a folder or hub id), or the
    configured architecture with random weights.

    A pretrained folder is checked before anything is allocated (``load_native_internvl``) and
    must agree with the config's image geometry. The embedding matrix is resized to the
    tokenizer (new special tokens are trainable rows); a separate output head stays separate.
    """
    m = config.mllm
    path = path if path is not None else m.path
    image_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    if path is not None:
        folder = resolve_model_folder(path)
        model = load_native_internvl(folder)
        _check_geometry(model.config, config, folder)
        if model.config.image_token_id != image_token_id:
            raise CheckpointLayoutError(
                f"{path}: config.image_token_id={model.config.image_token_id} but the tokenizer maps "
                f"{IMG_CONTEXT} to {image_token_id}; the tokenizer does not belong to this checkpoint"
            )
    else:
        text = m.text.model_dump()
        if config.preset == "tiny" or text["vocab_size"] < len(tokenizer):
            text["vocab_size"] = len(tokenizer)
        hf_config = internvl_config(
            vision=m.vision.model_dump(),
            text=text,
            tile_size=m.tile_size,
            downsample_ratio=m.downsample_ratio,
            projector_hidden_act=m.projector_hidden_act,
            image_token_id=image_token_id,
            tokens_per_tile=m.tokens_per_tile,
        )
        with torch.device(device):
            model = InternVLForConditionalGeneration(hf_config)
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return model


def _check_geometry(hf_config, config: SalmaConfig, folder) -> None:
    """The image tiling the data pipeline uses (``mllm.tile_size``, ``downsample_ratio``) must be
    the one the checkpoint was built for."""
    vision = hf_config.vision_config
    size, patch = tuple(vision.image_size), tuple(vision.patch_size)
    m = config.mllm
    mismatches = []
    if size != (m.tile_size, m.tile_size):
        mismatches.append(f"model.mllm.tile_size={size[0]} (config has {m.tile_size})")
    if patch != (m.vision.patch_size, m.vision.patch_size):
        mismatches.append(f"model.mllm.vision.patch_size={patch[0]} (config has {m.vision.patch_size})")
    if hf_config.downsample_ratio != m.downsample_ratio:
        mismatches.append(f"model.mllm.downsample_ratio={hf_config.downsample_ratio} (config has {m.downsample_ratio})")
    if mismatches:
        raise CheckpointLayoutError(f"{folder}: the checkpoint's image geometry differs from the config; set " + ", ".join(mismatches))


def build_sam(config: SamConfig, *, load_checkpoint: bool = True) -> SamAdapter:
    """SAM-2 alone, as ``config`` describes it (its checkpoint loaded unless ``load_checkpoint`` is
    false), on the CPU. Its random initialisation draws from the global torch generator."""
    sam_model = build_sam2_model(
        config_name=config.config_name,
        checkpoint=config.checkpoint if load_checkpoint else None,
        overrides=config.overrides,
        image_size=config.image_size,
    )
    return SamAdapter(sam=sam_model)


def build_salma(config: SalmaConfig, *, device: str | torch.device = "cpu") -> BuiltSalma:
    """Build the model a config describes, with its tokenizer and that config. ``device="meta"``
    builds the architecture without allocating weights (parameter counting at full size)."""
    torch.manual_seed(config.seed)
    init = None if config.init_from is None else init_from_folder(config.init_from)
    mllm_path = str(init / MLLM_DIR) if init is not None else config.mllm.path
    if mllm_path is not None:
        # Refuse a released remote-code folder before anything reads it (its tokenizer included).
        mllm_path = str(resolve_model_folder(mllm_path))
        require_native_internvl(mllm_path)
    tokenizer = load_tokenizer(tokenizer_name(config))
    mllm = SalmaMLLM(model=build_internvl(config, tokenizer, device=device, path=mllm_path))
    if config.mllm.gradient_checkpointing:
        # transformers 5 names it activation checkpointing (the old name is deprecated).
        enable = getattr(mllm.model, "activation_checkpointing_enable", None) or mllm.model.gradient_checkpointing_enable
        enable()
    # SAM-2 is built on the CPU even for device="meta": Hiera's constructor calls .item().
    sam = build_sam(config.sam, load_checkpoint=str(device) != "meta")
    mba = None
    if config.mba.enabled:
        b = config.mba
        # MBA draws its initialisation from a stream of its own, so that building it does not
        # shift the global one: every other parameter starts the same with MBA on or off, and the
        # arms of a sweep are paired on their shared weights (same seed, same initialisation).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + 7919)
            mba = _build_mba(sam.embed_dim, b)
    model = SalmaModel(
        mllm=mllm,
        sam=sam,
        mba=mba,
        seg_token_id=tokenizer.convert_tokens_to_ids(SEG_TOKEN),
        use_expression_tokens=config.mba.language_tokens == "seg_plus_expression",
        max_expression_tokens=config.mba.max_expression_tokens,
        prior_source=config.mba.prior,
        loss=config.loss.model_copy(),
        freeze_sam_encoder=config.freeze.sam_encoder,
    )
    if init is not None and str(device) != "meta":
        load_init_weights(model, init, sam=config.sam)
    if str(device) not in ("cpu", "meta"):
        model.to(device)
    apply_training_recipe(model, config)
    return BuiltSalma(model=model, tokenizer=tokenizer, config=config)


def apply_training_recipe(model: SalmaModel, config: SalmaConfig) -> None:
    """Freezing and LoRA of the training recipe (docs/design.md): the vision encoder, LLM base and SAM-2 image encoder are
    frozen in the real presets; the projector, SAM-2 decoder, [SEG]/expression projections, MBA
    and the (resized) token embeddings / output head train. ``tiny`` trains everything."""
    f = config.freeze
    internvl = model.mllm.model
    _set_trainable(internvl.model.vision_tower, not f.vision_encoder)
    _set_trainable(internvl.model.language_model, not f.llm)
    _set_trainable(model.sam.sam.image_encoder, not f.sam_encoder)
    if config.lora.enabled:
        model.mllm.apply_lora(
            r=config.lora.r, alpha=config.lora.alpha, dropout=config.lora.dropout,
            target_modules=config.lora.target_modules,
        )
    if f.llm:
        # New special tokens need trainable embedding rows: train the (tied) embedding and head.
        internvl.get_input_embeddings().weight.requires_grad_(True)
        internvl.get_output_embeddings().weight.requires_grad_(True)


def _set_trainable(module: nn.Module, trainable: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(trainable)


def count_parameters(module: nn.Module, *, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _build_mba(dim: int, b) -> MaskBiasedAttention:
    return MaskBiasedAttention(
        dim=dim,
        num_heads=b.num_heads,
        tau=b.tau,
        strength=b.strength,
        mode=b.mode,
        topk_tokens=b.topk_tokens,
        use_film=b.use_film,
        film_variant=b.film_variant,
        dropout=b.dropout,
    )
