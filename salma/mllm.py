"""The multimodal LLM: transformers' native ``InternVLForConditionalGeneration``, unchanged.

``SalmaMLLM`` only adds what SALMA needs around it: the hidden state at every ``[SEG]`` position
(taken *at* the position, not shifted) and the LoRA / freezing switches. Its logits are the raw
model's logits (a parity test checks this on shared weights).

``load_native_internvl`` loads a checkpoint folder in transformers' native layout, after checking
from the files alone (``config.json`` and the safetensors headers) that every stored tensor has
its place and shape in the architecture the config describes: a folder in another layout is an
error before any weight memory is allocated. Whether the output head is tied to the input
embeddings is decided by the checkpoint's tensors, not by the config's ``tie_word_embeddings``
flag: a stored head is a separate head (InternVL2.5-1B ships one), and it stays separate through
embedding resizing, LoRA merging and export.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import DynamicCache, InternVLConfig, InternVLForConditionalGeneration

from salma.checkpoint_layout import CheckpointLayoutError, TensorSpec, require_native_internvl, stored_tensors

logger = logging.getLogger(__name__)

# transformers saves the native InternVL with these top-level names (the layout of the public
# ``*-hf`` folders) and renames them to its module names on load; ``native_module_name`` applies
# the same renaming, so that a folder's tensors can be checked against a model's state dict.
_DISK_TO_MODULE_PREFIXES = (
    ("language_model.lm_head.", "lm_head."),
    ("language_model.model.", "model.language_model."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)
_MODULE_TO_DISK_PREFIXES = tuple((module, disk) for disk, module in _DISK_TO_MODULE_PREFIXES)
OUTPUT_HEAD = "lm_head.weight"  # module name of the output head


def _renamed(name: str, prefixes: tuple[tuple[str, str], ...]) -> str:
    for old, new in prefixes:
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def native_module_name(disk_name: str) -> str:
    """A tensor name as stored in a native InternVL folder → its name in the model's state dict
    (names already in module form pass through)."""
    return _renamed(disk_name, _DISK_TO_MODULE_PREFIXES)


def native_disk_name(module_name: str) -> str:
    """The inverse of ``native_module_name``: the name ``save_pretrained`` writes."""
    return _renamed(module_name, _MODULE_TO_DISK_PREFIXES)


def native_state_shapes(config: InternVLConfig) -> dict[str, tuple[int, ...]]:
    """Module name → shape of every tensor the architecture ``config`` stores, computed on the
    meta device (nothing is allocated). A tied head is left out: it is not stored."""
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop(OUTPUT_HEAD, None)
    return shapes


def check_stored_against(
    stored: dict[str, TensorSpec], expected: dict[str, tuple[int, ...]], *, source: str
) -> None:
    """Raise ``CheckpointLayoutError`` unless ``stored`` (disk names) holds exactly the
    ``expected`` tensors (module names) with their shapes."""
    by_module = {native_module_name(name): spec for name, spec in stored.items()}
    missing = sorted(set(expected) - set(by_module))
    unexpected = sorted(set(by_module) - set(expected))
    wrong = sorted(
        f"{name}: stored {spec.shape}, expected {expected[name]}"
        for name, spec in by_module.items()
        if name in expected and spec.shape != expected[name]
    )
    if missing or unexpected or wrong:
        raise CheckpointLayoutError(
            f"{source}: the stored tensors do not fit the architecture its config.json describes: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(wrong)} of another shape (e.g. {wrong[:2]})"
        )


def has_stored_head(stored: dict[str, TensorSpec]) -> bool:
    """Whether a native folder stores its own output head (a tied head is not stored)."""
    return any(native_module_name(name) == OUTPUT_HEAD for name in stored)


def load_native_internvl(folder: str | Path, *, dtype: torch.dtype = torch.float32) -> InternVLForConditionalGeneration:
    """Load a transformers-native InternVL folder strictly; every check happens before the
    weights are allocated (see the module docstring)."""
    folder = Path(folder)
    require_native_internvl(folder)
    stored = stored_tensors(folder)
    config = InternVLConfig.from_pretrained(folder)
    # The tensors decide the tying: a folder converted with the default top-level
    # ``tie_word_embeddings: true`` but a stored head of its own must keep that head.
    tied = not has_stored_head(stored)
    config.tie_word_embeddings = tied
    config.text_config.tie_word_embeddings = tied
    check_stored_against(stored, native_state_shapes(config), source=str(folder))
    model, info = InternVLForConditionalGeneration.from_pretrained(
        folder, config=config, dtype=dtype, output_loading_info=True, trust_remote_code=False
    )
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        raise CheckpointLayoutError(f"{folder}: the MLLM checkpoint does not match its architecture: {problems}")
    logger.info("loaded %s (%s output head)", folder, "tied" if tied else "separate")
    return model


@dataclass
class MLLMOutput:
    logits: torch.Tensor  # (B, L, V)
    hidden_states: torch.Tensor  # (B, L, D) last layer


def internvl_config(
    *,
    vision: dict,
    text: dict,
    tile_size: int,
    downsample_ratio: float,
    projector_hidden_act: str,
    image_token_id: int,
    tokens_per_tile: int,
) -> InternVLConfig:
    """An ``InternVLConfig`` for random initialisation (tests, the tiny preset, counting)."""
    vision_config = dict(
        model_type="internvl_vision",
        image_size=[tile_size, tile_size],
        patch_size=[vision["patch_size"], vision["patch_size"]],
        hidden_size=vision["hidden_size"],
        num_hidden_layers=vision["num_hidden_layers"],
        num_attention_heads=vision["num_attention_heads"],
        intermediate_size=vision["intermediate_size"],
        attention_bias=vision["attention_bias"],
        layer_scale_init_value=vision["layer_scale_init_value"],
        norm_type=vision["norm_type"],
        use_qk_norm=vision["use_qk_norm"],
    )
    text_config = dict(model_type="qwen2", **text)
    return InternVLConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=image_token_id,
        image_seq_length=tokens_per_tile,
        downsample_ratio=downsample_ratio,
        projector_hidden_act=projector_hidden_act,
        tie_word_embeddings=text["tie_word_embeddings"],
    )


class SalmaMLLM(nn.Module):
    """InternVL with access to the last-layer hidden states."""

    def __init__(self, *, model: InternVLForConditionalGeneration):
        super().__init__()
        self.model = model

    @property
    def hidden_size(self) -> int:
        return self.model.config.text_config.hidden_size

    @property
    def language_model(self) -> nn.Module:
        return self.model.model.language_model

    def forward(
        self,
        *,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        prefix: DynamicCache | None = None,
        prefix_mask: torch.Tensor | None = None,
    ) -> MLLMOutput:
        """Token ids (+ ``pixel_values``, encoded by the vision tower here), or ``inputs_embeds``
        from ``embed`` (the image features already in place). ``logits_to_keep=n`` computes the
        logits of the last n positions only (0: all; inference reads hidden states, not logits,
        and the output head over a long prompt is a large matrix product).

        ``prefix``: the key/value cache of tokens that come before every row (``prefix_cache``,
        one copy per row); the rows then continue it, right-padded (``attention_mask`` covers the
        rows only), and the states returned are those of the rows' tokens. ``prefix_mask`` (B, P)
        marks which cache positions hold tokens when the rows' prefixes differ in length (each
        left-padded to the cache's length); every row's own tokens then continue from its own
        prefix length. Without it every cache position is a token of every row."""
        if pixel_values is not None and pixel_values.shape[0] == 0:
            pixel_values = None
        extra = {}
        if prefix is not None:
            shared, (batch, length) = prefix.get_seq_length(), attention_mask.shape
            if prefix_mask is None:
                prefix_mask = attention_mask.new_ones(batch, shared)
            attention_mask = torch.cat([prefix_mask.to(attention_mask), attention_mask], dim=1)
            positions = torch.arange(length, device=attention_mask.device) + prefix_mask.sum(dim=1, keepdim=True)
            extra = {"cache": prefix, "position_ids": positions}
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            inputs_embeds=inputs_embeds,
            logits_to_keep=logits_to_keep,
            output_hidden_states=True,
            use_cache=prefix is not None,
            return_dict=True,
            **extra,
        )
        return MLLMOutput(logits=out.logits, hidden_states=out.hidden_states[-1])

    def prefix_cache(self, inputs_embeds: torch.Tensor) -> tuple[DynamicCache, torch.Tensor]:
        """(1, P, D) embeddings of tokens that several prompts begin with → their key/value cache
        and last-layer states (1, P, D): later passes continue from the cache (``forward``'s
        ``prefix``, or ``generate``'s ``cache``) instead of running these tokens again."""
        out = self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device),
            logits_to_keep=1,
            output_hidden_states=True,
            use_cache=True,
            return_dict=True,
        )
        return out.cache, out.hidden_states[-1]

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(tiles, 3, S, S) → (tiles, tokens per tile, D): the vision tower and projector, as the
        model's own forward runs them on ``pixel_values``."""
        return self.model.model.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor | None) -> torch.Tensor:
        """(B, L) ids → (B, L, D) input embeddings with ``image_features`` (tiles, tokens, D)
        scattered into the image-token positions of *every* row, the same operations as the
        model's forward: B prompts about one image share one run of the vision tower."""
        embeds = self.model.get_input_embeddings()(input_ids)
        if image_features is None:
            return embeds
        is_image = input_ids == self.model.config.image_token_id  # (B, L)
        per_row = image_features.shape[0] * image_features.shape[1]
        counts = is_image.sum(dim=1)
        if bool((counts != per_row).any()):
            raise ValueError(
                f"every prompt must hold {per_row} image tokens (one per image feature), got {counts.tolist()}"
            )
        features = image_features.to(embeds.device, embeds.dtype).expand(input_ids.shape[0], -1, -1, -1)
        return embeds.masked_scatter(is_image[..., None], features)

    def apply_lora(self, *, r: int, alpha: int, dropout: float, target_modules: list[str] | None) -> None:
        """Wrap the language model's linear layers with PEFT LoRA adapters (in place).

        ``target_modules=None`` targets every ``nn.Linear`` inside the language model; the output
        head (``lm_head``) lives outside it and is never wrapped.
        """
        from peft import LoraConfig, inject_adapter_in_model

        language_model = self.language_model
        if target_modules is None:
            target_modules = sorted(
                {name.rsplit(".", 1)[-1] for name, m in language_model.named_modules() if isinstance(m, nn.Linear)}
            )
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules)
        inject_adapter_in_model(config, language_model)
        logger.info("LoRA r=%d alpha=%d on %s", r, alpha, target_modules)

    def merge_lora(self) -> int:
        """Fold LoRA weights into the base linear layers and remove the adapters; returns how many
        layers were merged."""
        from peft.tuners.lora import LoraLayer

        merged = 0
        for parent in list(self.language_model.modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, LoraLayer):
                    child.merge()
                    setattr(parent, child_name, child.get_base_layer())
                    merged += 1
        return merged

    @property
    def has_lora(self) -> bool:
        from peft.tuners.lora import LoraLayer

        return any(isinstance(m, LoraLayer) for m in self.language_model.modules())
