"""Typed, self-validating configuration of the SALMA model.

A preset (``tiny``, ``salma-1b``) is a function returning a complete ``SalmaConfig``; an experiment
YAML holds only deltas on top of it (``resolve_model_config``). Unknown keys are errors everywhere
(``extra="forbid"``), and every validation error says how to fix the value.

Each concept has one type, defined here and used where it is needed: ``salma.builder`` maps the
architecture sections to keyword-only constructors; the loss settings (``LossConfig``) go to the
model as they are and give ``salma.losses`` its defaults; ``SamplingOptions`` and
``PretrainOptions`` are read by ``salma.data.sampling`` and ``salma.sam_pretraining`` and extended
by the experiment config of ``pipelines`` (``data``, ``sam_pretrain``). Nothing here imports torch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class StrictModel(BaseModel):
    """Base of every config section (``pipelines`` included): unknown keys are errors, values keep their types (``true``
    or ``'4'`` are not numbers; ``strict=True``), and no number is NaN or infinite
    (``allow_inf_nan=False``: a NaN learning rate would otherwise pass every ``<=``/``>=`` check
    and fail only inside the workers)."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, protected_namespaces=(), strict=True, allow_inf_nan=False
    )



class VisionArch(StrictModel):
    """InternViT vision tower (transformers' ``InternVLVisionConfig`` fields we set)."""

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    patch_size: int = 14
    attention_bias: bool = True
    layer_scale_init_value: float = 0.1
    norm_type: Literal["layer_norm", "rms_norm"] = "layer_norm"
    use_qk_norm: bool = False


class TextArch(StrictModel):
    """Qwen2 language model (transformers' ``Qwen2Config`` fields we set)."""

    hidden_size: int = 896
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    intermediate_size: int = 4864
    vocab_size: int = 151674
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    # InternVL2.5-1B ships an untied output head (0.94 B in total; 0.80 B if tied).
    tie_word_embeddings: bool = False


class MLLMConfig(StrictModel):
    """The InternVL multimodal LLM.

    ``path``: a local folder or hub id of a checkpoint in transformers' native InternVL layout.
    The released remote-code InternVL2.5 folders are refused with the command that converts them
    (``salma convert internvl SRC --out DST``, see docs/weights.md). With a path, the
    checkpoint's own ``config.json`` gives the architecture (``vision`` and ``text`` below are
    not used) and ``tile_size`` / ``downsample_ratio`` must agree with it. ``None`` builds the
    architecture below with random weights (tests, the tiny preset, parameter counting).
    ``tokenizer``: ``"tiny"`` builds the offline word-level tokenizer; anything else is loaded
    with ``AutoTokenizer.from_pretrained`` (defaults to ``path``).
    """

    path: str | None = None
    tokenizer: str | None = None
    vision: VisionArch = Field(default_factory=VisionArch)
    text: TextArch = Field(default_factory=TextArch)
    tile_size: int = 448
    min_tiles: int = 1
    max_tiles: int = 12
    use_thumbnail: bool = True
    downsample_ratio: float = 0.5
    projector_hidden_act: str = "gelu"
    gradient_checkpointing: bool = False

    @field_validator("tile_size")
    @classmethod
    def _tile_multiple(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("tile_size must be positive (448 for InternVL2.5)")
        return v

    @model_validator(mode="after")
    def _check(self) -> "MLLMConfig":
        patches = self.tile_size // self.vision.patch_size
        if self.tile_size % self.vision.patch_size:
            raise ValueError(
                f"mllm.tile_size={self.tile_size} must be a multiple of vision.patch_size={self.vision.patch_size}"
            )
        if (patches * self.downsample_ratio) % 1:
            raise ValueError(
                f"mllm.tile_size / patch_size = {patches} patches per side must be divisible by 1/downsample_ratio"
            )
        if not 1 <= self.min_tiles <= self.max_tiles:
            raise ValueError(f"need 1 <= mllm.min_tiles <= mllm.max_tiles, got {self.min_tiles}, {self.max_tiles}")
        return self

    @property
    def tokens_per_tile(self) -> int:
        side = self.tile_size // self.vision.patch_size
        return int(side * self.downsample_ratio) ** 2


# SAM-2 generations and Hiera trunk sizes, as the ``sam2`` package names its configs:
# ``configs/sam2/sam2_hiera_{t,s,b+,l}.yaml`` (SAM-2.0) and ``configs/sam2.1/sam2.1_hiera_*.yaml``
# (SAM-2.1). The two generations differ in weights, not only in training: SAM-2.1 adds
# ``no_obj_embed_spatial`` and a projection of the object pointers' temporal encoding
# (``obj_ptr_tpos_proj``), so a checkpoint loads into its own generation only.
SAM_VERSIONS = ("2.0", "2.1")
HIERA_SIZES = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}


def sam_package_config(version: str, hiera: str) -> str:
    """The ``sam2`` package's config name for a SAM-2 generation and Hiera size."""
    suffix = HIERA_SIZES[hiera]
    match version:
        case "2.0":
            return f"configs/sam2/sam2_hiera_{suffix}.yaml"
        case "2.1":
            return f"configs/sam2.1/sam2.1_hiera_{suffix}.yaml"
        case _:
            raise ValueError(f"unknown SAM-2 version {version!r}; choose one of {SAM_VERSIONS}")


def parse_sam_package_config(name: str) -> tuple[str, str]:
    """``sam2_hiera_l``, ``sam2.1_hiera_b+.yaml`` or ``configs/sam2.1/sam2.1_hiera_t.yaml`` →
    (version, hiera size); an error lists the accepted names."""
    stem = name.rsplit("/", 1)[-1].removesuffix(".yaml")
    for version in SAM_VERSIONS:
        for hiera, suffix in HIERA_SIZES.items():
            if sam_package_config(version, hiera).rsplit("/", 1)[-1].removesuffix(".yaml") == stem:
                return version, hiera
    accepted = [sam_package_config(v, h).rsplit("/", 1)[-1].removesuffix(".yaml") for v in SAM_VERSIONS for h in HIERA_SIZES]
    raise ValueError(f"{name!r} is not one of the sam2 package's model configs: {', '.join(accepted)}")


class SamConfig(StrictModel):
    """SAM-2 through the ``sam2`` package.

    ``version`` ("2.0" or "2.1") and ``hiera`` (tiny, small, base_plus, large) pick one of the
    package's own configs; ``overrides`` are Hydra overrides applied on top (the tiny preset
    shrinks the Hiera trunk with them); ``checkpoint`` a SAM-2 ``.pt`` of that generation and
    size (``sam2_hiera_large.pt`` is SAM-2.0 Hiera-L, ``sam2.1_hiera_large.pt`` SAM-2.1).
    ``image_size`` is the SAM input size (set it here, not through an override).
    """

    version: Literal["2.0", "2.1"] = "2.1"
    hiera: Literal["tiny", "small", "base_plus", "large"] = "large"
    checkpoint: str | None = None
    image_size: int = 1024
    overrides: list[str] = Field(default_factory=list)
    suppress_no_object: bool = False

    @model_validator(mode="before")
    @classmethod
    def _from_config_name(cls, data: Any) -> Any:
        # Configs written before ``version``/``hiera`` existed name the package config instead.
        if isinstance(data, dict) and isinstance(data.get("version"), float):
            # YAML reads an unquoted 2.0 / 2.1 as a number.
            data = {**data, "version": f"{data['version']:.1f}"}
        if isinstance(data, dict) and "config_name" in data:
            data = dict(data)
            name = data.pop("config_name")
            if "version" in data or "hiera" in data:
                raise ValueError("sam.config_name and sam.version/sam.hiera both given: keep version and hiera")
            data["version"], data["hiera"] = parse_sam_package_config(str(name))
        return data

    @field_validator("image_size")
    @classmethod
    def _size(cls, v: int) -> int:
        if v % 64:
            raise ValueError(f"sam.image_size={v} must be a multiple of 64 (SAM-2's stride-16 map times 4)")
        return v

    @field_validator("overrides")
    @classmethod
    def _no_image_size_override(cls, v: list[str]) -> list[str]:
        for item in v:
            if item.lstrip("+").split("=", 1)[0] == "model.image_size":
                raise ValueError(f"sam.overrides sets the input size ({item!r}): set sam.image_size instead")
        return v

    @property
    def config_name(self) -> str:
        """The ``sam2`` package config this version and size select."""
        return sam_package_config(self.version, self.hiera)


class MBAConfig(StrictModel):
    """Mask-Biased Attention. ``enabled: false`` is the Sa2VA baseline.

    ``prior``: where the mask prior comes from (``SalmaModel.frame_priors``): ``learned`` (SAM-2's
    language-free pre-pass, the method), ``uniform`` (no prior: "+CMA"), ``oracle`` (the union of
    the annotated objects; training and held-out measures on data that annotates every object),
    ``shuffled`` (another sample's learned prior, a control). The older ``use_prior: false`` is
    read as ``prior: uniform``.
    """

    enabled: bool = True
    num_heads: int = 8
    tau: float = 1.0
    strength: float = 1.0
    mode: Literal["gate", "bias"] = "gate"
    prior: Literal["learned", "oracle", "shuffled", "uniform"] = "learned"
    topk_tokens: int | None = 2
    use_film: bool = False
    # FiLM as described (LayerNorm'd features, mean of the language tokens, its own scale), or the
    # variant this code had first (raw features, router-pooled kept tokens, gated by the prior,
    # the attention's scale): salma.mask_biased_attention, step 5.
    film_variant: Literal["layernorm_mean", "prior_gated_router_pooled"] = "layernorm_mean"
    dropout: float = 0.0
    language_tokens: Literal["seg_plus_expression", "seg_only"] = "seg_plus_expression"
    max_expression_tokens: int = 16

    @model_validator(mode="before")
    @classmethod
    def _use_prior(cls, data: Any) -> Any:
        # Configs (and exported models) written before ``prior`` existed say ``use_prior``.
        if isinstance(data, dict) and "use_prior" in data:
            data = dict(data)
            use_prior = data.pop("use_prior")
            if not use_prior:
                if data.get("prior", "uniform") != "uniform":
                    raise ValueError(f"mba.use_prior=false and mba.prior={data['prior']!r}: keep mba.prior only")
                data["prior"] = "uniform"
        return data

    @field_validator("tau")
    @classmethod
    def _tau(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"mba.tau={v} must be > 0 (it divides the prior logits)")
        return v

    @field_validator("topk_tokens")
    @classmethod
    def _topk(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"mba.topk_tokens={v} must be >= 1, or null for all tokens")
        return v


class LossConfig(StrictModel):
    """Loss weights and schedules (values follow Sa2VA's and the SALMA paper's; docs/design.md).

    The one definition of these settings: the model reads it as it is and ``salma.losses`` takes
    its defaults from it. The mask loss is Sa2VA's (sigmoid BCE ×2.0, Dice ×0.5 with eps 1.0, on
    12544 = 112² uncertainty-sampled points, oversample 3, importance 0.75, as in Mask2Former);
    TMC (×0.1, temperature 0.15) and the boundary loss (×0.05) are SALMA's auxiliary losses; the
    warm-ups are fractions of the total number of optimiser steps."""

    lm_weight: float = 1.0
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    dice_eps: float = 1.0
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    tmc_weight: float = 0.1
    tmc_temperature: float = 0.15
    boundary_weight: float = 0.05
    # Which multimask candidate the mask loss supervises (see SalmaModel._mask_terms):
    # "predicted_iou" as Sa2VA (the IoU head's choice, the head untrained), "min_loss" as SAM-2's
    # own training (the best candidate, plus an L1 IoU-head loss weighted by iou_weight).
    mask_selection: Literal["predicted_iou", "min_loss"] = "predicted_iou"
    iou_weight: float = 1.0
    # SAM-2's object-presence BCE on every decoded (object, frame) pair (target: the ground-truth
    # mask is not empty). Off in the paper recipe, whose SAM-2.1 checkpoint arrives with a
    # trained presence head; the tiny preset turns it on, since its tracker empties every frame
    # whose presence logit is <= 0 and nothing else keeps that head calibrated.
    object_weight: float = 0.0
    # SAM-2's own video loss on the video samples: each object is given its ground-truth mask on
    # its first sampled frame and tracked through the memory path over the others (BCE + Dice on
    # every candidate, plus the object-presence BCE). Off in the paper recipe, as in Sa2VA, whose
    # SAM-2.1 tracker arrives trained and stays as good while the image encoder moves little; the
    # tiny preset turns it on, since SALMA training moves the whole of the small SAM-2 and its
    # tracker, trained on nothing else, then falls out of step with the encoder.
    track_weight: float = 0.0
    aux_warmup_fraction: float = 0.2
    gamma_warmup_fraction: float = 0.1

    @model_validator(mode="after")
    def _check(self) -> "LossConfig":
        for name in ("aux_warmup_fraction", "gamma_warmup_fraction", "importance_sample_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"loss.{name}={value} must lie in [0, 1]")
        if self.tmc_temperature <= 0:
            raise ValueError("loss.tmc_temperature must be > 0")
        for name in ("object_weight", "track_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name}={getattr(self, name)} must be >= 0")
        return self


class LoraConfig(StrictModel):
    """LoRA on the LLM through PEFT. ``target_modules: null`` = every linear layer of the language
    model except the output head."""

    enabled: bool = True
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    target_modules: list[str] | None = None


class FreezeConfig(StrictModel):
    vision_encoder: bool = True
    llm: bool = True
    sam_encoder: bool = True


class SamplingOptions(StrictModel):
    """How an example is drawn from a record; the experiment config's ``data`` section is this
    type plus the data sources (``pipelines.config.DataConfig`` extends it)."""

    num_frames: int = 5
    frame_sampling: Literal["random", "consecutive"] = "random"
    max_objects: int = 5

    @model_validator(mode="after")
    def _check(self) -> "SamplingOptions":
        for name in ("num_frames", "max_objects"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name}={getattr(self, name)} must be >= 1 (frames / objects per sample)")
        return self

    def sampling_options(self) -> "SamplingOptions":
        """These settings alone, as a ``SamplingOptions`` (also from a subclass)."""
        return SamplingOptions(**{name: getattr(self, name) for name in SamplingOptions.model_fields})


class PretrainOptions(StrictModel):
    """Defaults: the settings under which the tiny decoder learned to follow the prompt in each of
    3 seeds (see the module docstring); ``iou_weight`` and ``warmup_fraction`` are 0 on purpose.

    ``prompts_per_image`` > 1 encodes ``batch_size / prompts_per_image`` frames per step and
    prompts each of them that many times: the decoder then follows the prompt about three times
    earlier in steps (4 prompts on 8 frames), but a shorter pre-training on it left SALMA
    scoring lower in the quickstart, so 1 is the default
    (docs/experiments/2026-12-07-quickstart-time-budget.md).

    ``video_steps`` > 0 (and a ``TrackSet``) adds the video phase after the ``steps`` image steps:
    clip batches (``clip_batch`` clips of ``clip_frames`` frames, the first frame given its mask)
    alternate with image batches, and the object-presence loss (``object_weight``) is on in both.
    Each phase has a fresh optimizer and its own schedule (constant ``lr``, then decaying over
    the phase's last ``decay_fraction``).

    The experiment config's ``sam_pretrain`` section is this type plus where the result goes
    (``pipelines.config.SamPretrainConfig``).
    """

    steps: int = 3000
    batch_size: int = 8
    prompts_per_image: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_fraction: float = 0.0
    decay_fraction: float = 0.2
    grad_clip: float = 1.0
    box_probability: float = 0.5
    box_noise: float = 0.1  # SAM: box corners jittered with std 0.1 x box side (at most 20 px)
    candidates: Literal["all", "best"] = "all"
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    iou_weight: float = 0.0
    video_steps: int = 0
    clip_batch: int = 4
    clip_frames: int = 4
    object_weight: float = 1.0
    log_every: int = 100
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "PretrainOptions":
        if self.steps < 1 or self.batch_size < 1 or self.clip_batch < 1 or self.log_every < 1:
            raise ValueError("sam_pretrain.steps, batch_size, clip_batch and log_every must be >= 1")
        if self.prompts_per_image < 1 or self.batch_size % self.prompts_per_image:
            raise ValueError(
                f"sam_pretrain.prompts_per_image={self.prompts_per_image} must be >= 1 and divide "
                f"sam_pretrain.batch_size={self.batch_size}"
            )
        if self.video_steps < 0:
            raise ValueError(f"sam_pretrain.video_steps={self.video_steps} must be >= 0 (0: images only)")
        if self.clip_frames < 2:
            raise ValueError(f"sam_pretrain.clip_frames={self.clip_frames} must be >= 2 (a conditioning frame and a tracked one)")
        if self.lr <= 0:
            raise ValueError(f"sam_pretrain.lr={self.lr} must be > 0")
        for name in ("box_probability", "warmup_fraction", "decay_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"sam_pretrain.{name}={getattr(self, name)} must lie in [0, 1]")
        return self

    def pretrain_options(self) -> "PretrainOptions":
        """These settings alone, as a ``PretrainOptions`` (also from a subclass)."""
        return PretrainOptions(**{name: getattr(self, name) for name in PretrainOptions.model_fields})


class ClutterCounts(StrictModel):
    """Sizes of the clutter-lure splits (``salma.data.synthetic_clutter``); all 0 = none written.
    The experiment config's ``data.synthetic.clutter``.

    ``train_*`` go to ``clutter_train`` (half lure, half control scenes, up to two expressions per
    target), ``eval_*`` to each of ``lure`` and ``control`` (one expression per image or video,
    so that evaluation samples are independent).
    """

    train_images: int = Field(0, ge=0)
    eval_images: int = Field(0, ge=0)
    train_videos: int = Field(0, ge=0)
    eval_videos: int = Field(0, ge=0)

    @property
    def enabled(self) -> bool:
        return any((self.train_images, self.eval_images, self.train_videos, self.eval_videos))

    def image_splits(self) -> dict[str, int]:
        return {"clutter_train": self.train_images, "lure": self.eval_images, "control": self.eval_images}

    def video_splits(self) -> dict[str, int]:
        return {"clutter_train": self.train_videos, "lure": self.eval_videos, "control": self.eval_videos}


class SalmaConfig(StrictModel):
    """The whole model.

    ``init_from``: an exported SALMA folder (``salma export``) or a converted Sa2VA release
    (``salma convert sa2va``), as a path or hub id. Its MLLM, tokenizer, SAM-2, ``[SEG]``
    projector and (if it has them) MBA weights start the model; the architecture here must
    match it, except that parameters the export lacks and that may start fresh (MBA and the
    expression projector: ``salma.export.INIT_FROM_MAY_START_FRESH``) keep their initialisation,
    which is logged. The export supplies the weights, so ``mllm.path``, ``mllm.tokenizer`` and
    ``sam.checkpoint`` stay unset.
    """

    preset: Literal["tiny", "salma-1b"] = "salma-1b"
    init_from: str | None = None
    mllm: MLLMConfig = Field(default_factory=MLLMConfig)
    sam: SamConfig = Field(default_factory=SamConfig)
    mba: MBAConfig = Field(default_factory=MBAConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    freeze: FreezeConfig = Field(default_factory=FreezeConfig)
    seed: int = 0

    @model_validator(mode="after")
    def _init_from_supplies_the_weights(self) -> "SalmaConfig":
        if self.init_from is not None:
            given = [
                name
                for name, value in (
                    ("mllm.path", self.mllm.path),
                    ("mllm.tokenizer", self.mllm.tokenizer),
                    ("sam.checkpoint", self.sam.checkpoint),
                )
                if value is not None
            ]
            if given:
                raise ValueError(
                    f"init_from={self.init_from!r} supplies the MLLM, its tokenizer and SAM-2; "
                    f"set {', '.join(given)} to null"
                )
        return self


def tiny_config() -> SalmaConfig:
    """The embedded default: random init, builds offline in well under a second, trains on CPU."""
    sam_overrides = [
        "++model.image_encoder.trunk.embed_dim=16",
        "++model.image_encoder.trunk.num_heads=1",
        "++model.image_encoder.trunk.stages=[1,2,1,1]",
        "++model.image_encoder.trunk.global_att_blocks=[2]",
        "++model.image_encoder.trunk.window_spec=[8,4,4,4]",
        "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
        "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]",
        "++model.image_encoder.neck.d_model=32",
        "++model.image_encoder.neck.position_encoding.num_pos_feats=32",
        "++model.memory_attention.d_model=32",
        "++model.memory_attention.layer.d_model=32",
        "++model.memory_attention.layer.dim_feedforward=64",
        "++model.memory_attention.layer.self_attention.embedding_dim=32",
        "++model.memory_attention.layer.self_attention.feat_sizes=[8,8]",
        "++model.memory_attention.layer.cross_attention.embedding_dim=32",
        "++model.memory_attention.layer.cross_attention.feat_sizes=[8,8]",
        "++model.memory_attention.layer.cross_attention.kv_in_dim=16",
        "++model.memory_attention.num_layers=1",
        "++model.memory_encoder.in_dim=32",
        "++model.memory_encoder.out_dim=16",
        "++model.memory_encoder.position_encoding.num_pos_feats=16",
        "++model.memory_encoder.mask_downsampler.embed_dim=32",
        "++model.memory_encoder.fuser.layer.dim=32",
    ]
    return SalmaConfig(
        preset="tiny",
        mllm=MLLMConfig(
            path=None,
            tokenizer="tiny",
            vision=VisionArch(
                hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=14
            ),
            text=TextArch(
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=128,
                vocab_size=0,  # set from the tiny tokenizer by the builder
                max_position_embeddings=2048,
                rope_theta=10000.0,
            ),
            tile_size=56,
            max_tiles=2,
        ),
        sam=SamConfig(version="2.1", hiera="tiny", image_size=128, overrides=sam_overrides),
        mba=MBAConfig(num_heads=2),
        loss=LossConfig(num_points=1024, object_weight=1.0, track_weight=1.0),
        lora=LoraConfig(enabled=False),
        freeze=FreezeConfig(vision_encoder=False, llm=False, sam_encoder=False),
    )


def salma_1b_config() -> SalmaConfig:
    """InternVL2.5-1B (InternViT-300M + Qwen2.5-0.5B) + SAM-2.1 Hiera-L, the paper's recipe.

    Which SAM-2 the releases use: Sa2VA-1B and the public SALMA code ship SAM-2.0 Hiera-L
    (``sam2_hiera_large.pt``); this preset defaults to SAM-2.1 Hiera-L
    (``sam2.1_hiera_large.pt``). Set ``sam.version: "2.0"`` to start from the SAM-2.0 weights
    (``experiments/salma_1b_from_sa2va.yaml`` does, since its weights come from Sa2VA-1B).
    """
    return SalmaConfig(preset="salma-1b")


def preset_config(name: str) -> SalmaConfig:
    match name:
        case "tiny":
            return tiny_config()
        case "salma-1b":
            return salma_1b_config()
        case _:
            raise ValueError(f"unknown model preset {name!r}; choose 'tiny' or 'salma-1b'")


def deep_update(base: dict[str, Any], delta: dict[str, Any], *, where: str = "") -> dict[str, Any]:
    """Recursively apply ``delta`` onto ``base`` (a new dict). Nested dicts merge; other values
    replace. Keys absent from ``base`` are kept so that validation reports them as unknown."""
    out = dict(base)
    for key, value in delta.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value, where=f"{where}{key}.")
        else:
            out[key] = value
    return out


def resolve_model_config(delta: dict[str, Any] | None) -> SalmaConfig:
    """Preset defaults + the experiment's deltas → a validated ``SalmaConfig``."""
    delta = dict(delta or {})
    preset = delta.get("preset", "tiny")
    base = preset_config(preset).model_dump()
    return SalmaConfig.model_validate(deep_update(base, delta))
