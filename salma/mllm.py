"""The multimodal LLM: transformers' native ``InternVLForConditionalGeneration``, unchanged.

``SalmaMLLM`` only adds what SALMA needs around it: the hidden state at every ``[SEG]`` position
(taken *at* the position, not shifted) and the LoRA / freezing switches. Its logits are the raw
model's logits (a parity test checks this on shared weights).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import InternVLConfig, InternVLForConditionalGeneration

logger = logging.getLogger(__name__)


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
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None,
    ) -> MLLMOutput:
        if pixel_values is not None and pixel_values.shape[0] == 0:
            pixel_values = None
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            output_hidden_states=True,
            use_cache=False,
            return_dict=True,
        )
        return MLLMOutput(logits=out.logits, hidden_states=out.hidden_states[-1])

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
