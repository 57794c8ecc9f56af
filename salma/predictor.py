"""Inference without Ray: an image or a video plus a sentence → the answer and one mask per ``[SEG]``.

Images: the MLLM sees the dynamically tiled image; each generated ``[SEG]`` becomes a language
prompt; SAM-2 decodes it on the image after Mask-Biased Attention (the pre-pass prior is computed
once for the image).

Videos: the MLLM sees K key frames (uniformly spaced by default), one tile each. The key frames
are decoded like images — language-conditioned, with MBA — and SAM-2's memory tracker, seeded with
those masks, propagates every object to all other frames. Masks are upsampled to the original
resolution and thresholded at probability 0.5 (logit 0).

A record's expressions are answered together (``segment_expressions``): the frames are encoded
once (``salma.record_features.RecordFeatures``), the language model runs the prompts' shared
beginning (image tokens included) once and their own tokens as one padded batch continuing its
key/value cache, whose generation steps also give the ``[SEG]`` hidden states, and a video's tracker
follows every object in one pass, all objects as one batch per frame (``salma.batched_tracking``).
``salma.per_expression_predictor`` keeps the earlier one-expression-at-a-time path as the
reference the tests compare against.

The Ray Data inference actor (``pipelines.infer``) wraps this same class.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from salma.batched_tracking import propagate_key_masks_batched, unbatchable_settings
from salma.conversation import Round, encode_rounds, referring_round
from salma.data.examples import ImageGeometry
from salma.model import SalmaModel
from salma.record_features import RecordFeatures
from salma.tokenizer import IM_END, SEG_TOKEN

if TYPE_CHECKING:
    from salma.builder import BuiltSalma

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    answer: str
    masks: list[np.ndarray]  # one per [SEG]: (H, W) bool for an image, (T, H, W) bool for a video
    key_frames: list[int] = field(default_factory=list)
    # Diagnostics of the key-frame decode (per [SEG], per key frame), for visual reports:
    prior: np.ndarray | None = None  # (K, h, w) pre-pass probability per key frame
    mba_energy: np.ndarray | None = None  # (S, K, h, w) energy of the MBA update
    language_change: np.ndarray | None = None  # (S, K, h, w) squared norm of the feature change
    key_logits: np.ndarray | None = None  # (S, K, 4h, 4w) low-resolution mask logits on the key frames


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The compute precision: float32 on CPU; on a GPU bfloat16 where it supports it, else
    float16; a name from ``DTYPES`` (or a ``torch.dtype``) overrides."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype {dtype} is not supported; use one of {', '.join(DTYPES)}")
        return dtype
    if dtype is None or dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def compile_decoder_and_mba(model: SalmaModel) -> None:
    """``torch.compile`` SAM-2's mask decoder and the MBA block in place (``nn.Module.compile``:
    parameter names, hence export and loading, are unchanged). The first call of each new input
    shape pays the compilation."""
    model.sam.sam.sam_mask_decoder.compile(dynamic=True)
    if model.mba is not None:
        model.mba.compile(dynamic=True)


def answer_text(tokenizer, tokens: list[int]) -> str:
    """The answer's text: special tokens kept (``[SEG]`` is one), without the ``<|im_end|>`` that
    closes the turn."""
    if tokens and tokens[-1] == tokenizer.convert_tokens_to_ids(IM_END):
        tokens = tokens[:-1]
    return tokenizer.decode(tokens, skip_special_tokens=False)


def key_frame_indices(num_frames: int, k: int, sampling: str = "uniform") -> list[int]:
    """K key frames out of T: uniformly spaced (first and last included) or the first K."""
    k = max(1, min(k, num_frames))
    if sampling == "first":
        return list(range(k))
    if sampling != "uniform":
        raise ValueError(f"unknown key-frame sampling {sampling!r}; use 'uniform' or 'first'")
    return sorted({int(round(x)) for x in np.linspace(0, num_frames - 1, k)})


class SalmaPredictor:
    """Owns what inference needs besides the module: ``built`` (``build_salma``,
    ``load_exported``) gives the model, the tokenizer that encodes prompts and decodes answers,
    and the resolved config (image geometry, SAM-2 options)."""

    def __init__(
        self,
        built: BuiltSalma,
        *,
        num_key_frames: int = 5,
        key_frame_sampling: str = "uniform",
        max_new_tokens: int = 32,
        device: str | torch.device = "cpu",
        expression_batch_size: int = 16,
        dtype: str | torch.dtype | None = None,
        compile_decoder: bool = False,
        batch_decoder: bool = False,
    ):
        if expression_batch_size < 1:
            raise ValueError(f"expression_batch_size={expression_batch_size} must be >= 1")
        self.model = built.model.eval().to(device)
        self.device = torch.device(device)
        self.expression_batch_size = expression_batch_size
        self.batch_decoder = batch_decoder
        self.dtype = resolve_dtype(dtype, self.device)
        if compile_decoder:
            compile_decoder_and_mba(self.model)
        self.tokenizer = built.tokenizer
        self.config = built.config
        self.geometry = ImageGeometry.from_config(built.config)
        self.num_key_frames = num_key_frames
        self.key_frame_sampling = key_frame_sampling
        self.max_new_tokens = max_new_tokens
        self.seg_token_id = self.tokenizer.convert_tokens_to_ids(SEG_TOKEN)
        self.suppress_no_object = built.config.sam.suppress_no_object

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config, **kwargs) -> "SalmaPredictor":
        from salma.builder import build_salma

        return cls(build_salma(config), **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        revision: str | None = None,
        cache_dir: str | None = None,
        local_files_only: bool | None = None,
        **kwargs,
    ) -> "SalmaPredictor":
        """An exported model (``salma export``, ``salma convert sa2va``) from a local folder or a
        Hugging Face hub id (``owner/name``, through ``huggingface_hub``: from its cache when
        ``local_files_only`` or ``HF_HUB_OFFLINE=1``). Only weights and JSON are read; no code
        from the repository is ever run (``trust_remote_code`` is never enabled)."""
        from salma.export import load_exported
        from salma.hub import resolve_model_folder

        folder = resolve_model_folder(
            name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
        )
        return cls(load_exported(folder), **kwargs)

    # ------------------------------------------------------------------ public API
    def predict(self, frames: np.ndarray | list[np.ndarray], text: str) -> Prediction:
        """Free-form instruction (``"Please segment the red circle."``); the answer decides how
        many masks come back."""
        return self._run_records([(_as_frames(frames), [Round(prefix=text.strip())], None)])[0][0]

    def segment(self, frames: np.ndarray | list[np.ndarray], expression: str, *, generate: bool = True) -> Prediction:
        """A referring expression, asked with the first training template (benchmark evaluation).

        ``generate=False`` teacher-forces the first answer template (``"It is [SEG]."``) instead of
        decoding, which guarantees exactly one mask: useful to measure the segmentation branch
        alone; the benchmark convention (and the default) is to generate.
        """
        return self.segment_expressions(frames, [expression], generate=generate)[0]

    def segment_expressions(
        self, frames: np.ndarray | list[np.ndarray], expressions: list[str], *, generate: bool = True
    ) -> list[Prediction]:
        """Every expression about one image or video → one ``Prediction`` each, in order.

        The record is encoded once (``RecordFeatures``: InternVL's vision tower, SAM-2's encoder
        and pre-pass on the key frames); the expressions go through the language model and the
        mask decoder in batches of ``expression_batch_size``, and a video's tracker follows every
        object of every expression in one pass over the frames. Same results as asking
        ``segment`` once per expression, up to float rounding (docs/inference.md).
        """
        return self.segment_records([(frames, expressions)], generate=generate)[0]

    def segment_records(
        self, records: list[tuple[np.ndarray | list[np.ndarray], list[str]]], *, generate: bool = True
    ) -> list[list[Prediction]]:
        """Several records at once: ``(frames, expressions)`` each → one list of predictions per
        record, as ``segment_expressions`` gives for it alone (up to float rounding).

        Each encoder runs once for all the records (their tiles in one batch through the vision
        tower, their key frames in one batch through SAM-2's encoder), each record's shared prompt
        prefix once, and the expressions of every record go through the language model together,
        in batches of ``expression_batch_size`` rows (each row continues its own record's prefix).
        The mask decoder and the tracker run record by record. What this buys is occupancy: on a
        GPU, a record with few expressions leaves the language model's decoding steps mostly idle.
        """
        asked = []
        for frames, expressions in records:
            frames = _as_frames(frames)
            media = "video" if len(frames) > 1 else "image"
            questions = [referring_round(e, media=media, rng=None, answer=False) for e in expressions]
            forced = None if generate else [referring_round(e, media=media, rng=None).answer for e in expressions]
            asked.append((frames, questions, forced))
        return self._run_records(asked)

    # ------------------------------------------------------------------ internals
    @torch.no_grad()
    def _run_records(
        self, asked: list[tuple[list[np.ndarray], list[Round], list[str] | None]]
    ) -> list[list[Prediction]]:
        """Records ``(frames, questions, forced answers or None)`` → their predictions."""
        results: list[list[Prediction]] = [[] for _ in asked]
        todo = [i for i, (_, questions, _) in enumerate(asked) if questions]
        if not todo:
            return results
        with self._precision():
            keys = [self._keys(len(asked[i][0])) for i in todo]
            features = RecordFeatures.encode_many(self.model, [(asked[i][0], k) for i, k in zip(todo, keys)],
                                                  self.geometry, self.device)
            rows: list[_Row] = []  # every (record, question), record by record
            plain: list[list[_Row]] = []  # records whose rows carry their image tokens (no prefix)
            for i, record in zip(todo, features):
                _, questions, forced = asked[i]
                encoded = [encode_rounds(self.tokenizer, [q], tokens_per_image=record.tokens_per_image)
                           for q in questions]
                prefix = self._shared_prefix(record, [e.input_ids for e in encoded], alone=len(todo) == 1)
                mine = [_Row(i, record, e.input_ids, e.expression_positions[0], prefix,
                             None if forced is None else forced[q]) for q, e in enumerate(encoded)]
                if prefix is None:
                    plain.append(mine)
                else:
                    rows.extend(mine)
            key_logits: dict[int, list[torch.Tensor]] = {i: [] for i in todo}  # (S_j, K, 4h, 4w) per prediction
            size = self.expression_batch_size
            batches = [rows[start : start + size] for start in range(0, len(rows), size)]
            batches += [group[start : start + size] for group in plain for start in range(0, len(group), size)]
            for batch in batches:
                answers = self._language(batch)
                for record_index in dict.fromkeys(row.record_index for row in batch):
                    own = [(row, a) for row, a in zip(batch, answers) if row.record_index == record_index]
                    groups = [own] if self.batch_decoder else [[pair] for pair in own]
                    for group in groups:
                        logits, decoded = self._decode(group[0][0].record, [a for _, a in group])
                        key_logits[record_index].extend(logits)
                        results[record_index].extend(decoded)
            for i, record in zip(todo, features):
                if record.media == "video":
                    self._track(record, results[i], key_logits[i])
        return results

    def _keys(self, num_frames: int) -> list[int]:
        if num_frames == 1:
            return [0]
        return key_frame_indices(num_frames, self.num_key_frames, self.key_frame_sampling)

    def _shared_prefix(
        self, record: RecordFeatures, prompts: list[list[int]], *, alone: bool = True
    ) -> SharedPrefix | None:
        """The language model's pass over what every prompt of the record begins with (the chat
        header, the image tokens, the template's words before the expression), run once: its
        key/value cache and last-layer states. None where the shared part would not hold every
        image token, and for a single prompt of a record asked ``alone`` (its one pass is then the
        whole prompt); a record batched with others always gets one, since rows of different
        records can only share a batch after their image tokens."""
        if len(prompts) < 2 and alone:
            return None
        length = 0
        shortest = min(len(p) for p in prompts)
        while length < shortest - 1 and all(p[length] == prompts[0][length] for p in prompts):
            length += 1  # every prompt keeps at least one token of its own, for the first generation step
        image_id = self.model.mllm.image_token_id
        if any(image_id in p[length:] for p in prompts):
            return None
        ids = torch.tensor([prompts[0][:length]], device=self.device)
        cache, hidden = self.model.mllm.prefix_cache(self.model.mllm.embed(ids, record.image_features))
        return SharedPrefix(length=length, cache=cache, hidden=hidden[0])

    def _language(self, rows: list[_Row]) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """One language-model pass for a batch of rows: every row after its record's prefix, or,
        without prefixes, whole prompts about one record. Per row: (answer, its [SEG] hidden
        states (S, D), the last-layer states of its expression tokens (E, D)). The rows are all
        generated or all teacher-forced (one call asks one way)."""
        prefix = _BatchPrefix.of(rows)
        if prefix is None and len({id(row.record) for row in rows}) > 1:
            raise ValueError("rows of different records share a batch only after their prefixes")
        if rows[0].forced is None:
            return self._generate(rows, prefix)
        answers = [self.tokenizer(row.forced + IM_END, add_special_tokens=False).input_ids for row in rows]
        # Teacher forcing: prompt + answer in one forward, right-padded (padding sits after every
        # real token, so the causal attention of the real tokens never reaches it).
        own = [row.own + a for row, a in zip(rows, answers)]
        ids, mask = _pad(own, self.tokenizer.pad_token_id, left=False, device=self.device)
        if prefix is None:
            out = self.model.mllm(inputs_embeds=self.model.mllm.embed(ids, rows[0].record.image_features),
                                  attention_mask=mask, logits_to_keep=1)
        else:
            out = self.model.mllm(inputs_embeds=self.model.mllm.embed(ids, None), attention_mask=mask,
                                  logits_to_keep=1, prefix=prefix.cache, prefix_mask=prefix.mask)
        results = []
        for i, (row, tokens, answer) in enumerate(zip(rows, own, answers)):
            seg_at = [j for j, token in enumerate(tokens) if token == self.seg_token_id]
            results.append((
                answer_text(self.tokenizer, answer),
                out.hidden_states[i, seg_at],
                _prompt_states(row.prefix, out.hidden_states[i], row.positions, offset=0),
            ))
        return results

    def _generate(self, rows: list[_Row], prefix: _BatchPrefix | None) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """Greedy decoding of a batch of rows (left-padded) until ``<|im_end|>`` or
        ``max_new_tokens``; the [SEG] hidden states come from the generation's own steps: the
        state *at* a generated token is computed on the step that feeds it back, one step after
        it was chosen. A [SEG] chosen on the very last step was never fed back; only then is its
        row run once more, teacher-forced. With prefixes, generation starts from their cache and
        the padding sits between each prefix and its row's own tokens (positions follow the
        attention mask, so every row sees the same positions as alone)."""
        eos = self.tokenizer.convert_tokens_to_ids(IM_END)
        ids, mask = _pad([row.own for row in rows], self.tokenizer.pad_token_id, left=True, device=self.device)
        if prefix is None:
            embeds, cache = self.model.mllm.embed(ids, rows[0].record.image_features), {}
        else:
            own = self.model.mllm.embed(ids, None)
            # generate reads the whole sequence and feeds on only what the cache lacks: the
            # prefix part of ``inputs_embeds`` is never read, zeros stand in for it.
            shared = prefix.mask.shape[1]
            embeds = torch.cat([own.new_zeros(len(rows), shared, own.shape[-1]), own], dim=1)
            mask = torch.cat([prefix.mask.to(mask), mask], dim=1)
            cache = {"cache": prefix.cache}
        out = self.model.mllm.model.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=self.tokenizer.pad_token_id,
            suppress_tokens=[self.model.mllm.image_token_id],  # a generated image placeholder has no image
            output_hidden_states=True,
            return_dict_in_generate=True,
            **cache,
        )
        new_tokens = out.sequences[:, -len(out.hidden_states) :] if out.sequences.shape[1] > ids.shape[1] else out.sequences
        prefill = out.hidden_states[0][-1]  # (B, L, D) last layer over the rows' own tokens
        steps = [h[-1][:, 0] for h in out.hidden_states[1:]]  # step j: (B, D), the state at generated token j - 1
        results = []
        for i, row in enumerate(rows):
            tokens = new_tokens[i].tolist()
            if eos in tokens:
                tokens = tokens[: tokens.index(eos) + 1]
            offset = ids.shape[1] - len(row.own)  # left padding
            prompt_segs = [j for j, t in enumerate(row.prompt) if t == self.seg_token_id]
            seg_states = list(_prompt_states(row.prefix, prefill[i], prompt_segs, offset=offset))
            for j, token in enumerate(tokens):
                if token != self.seg_token_id:
                    continue
                if j < len(steps):
                    seg_states.append(steps[j][i])
                else:  # chosen on the last step: never fed back
                    seg_states.append(self._state_after(row.record, row.prompt + tokens))
            hidden = torch.stack(seg_states) if seg_states else prefill.new_zeros(0, prefill.shape[-1])
            results.append((
                answer_text(self.tokenizer, tokens),
                hidden,
                _prompt_states(row.prefix, prefill[i], row.positions, offset=offset),
            ))
        return results

    def _state_after(self, record: RecordFeatures, row: list[int]) -> torch.Tensor:
        """The last-layer state at the last token of ``row`` (one teacher-forced forward)."""
        ids = torch.tensor([row], device=self.device)
        out = self.model.mllm(inputs_embeds=self.model.mllm.embed(ids, record.image_features),
                              attention_mask=torch.ones_like(ids), logits_to_keep=1)
        return out.hidden_states[0, -1]

    def _decode(
        self, record: RecordFeatures, answers: list[tuple[str, torch.Tensor, torch.Tensor]]
    ) -> tuple[list[torch.Tensor], list[Prediction]]:
        """Every [SEG] of a batch of answers on every key frame, in one decoder batch. Returns the
        (S_i, K, 4h, 4w) key-frame logits and the prediction of each answer (image masks filled
        in; a video's masks come from the tracker)."""
        model, device, k = self.model, self.device, len(record.keys)
        counts = [seg.shape[0] for _, seg, _ in answers]
        total = sum(counts)
        fh, fw = record.sam.image_embed.shape[-2:]
        prior = None if record.priors is None else torch.sigmoid(record.priors[:, 0]).float().cpu().numpy()
        if total == 0:
            empty = record.sam.image_embed.new_zeros(0, k, 4 * fh, 4 * fw)
            return [empty] * len(answers), [
                Prediction(answer=a, masks=[], key_frames=list(record.keys)) for a, _, _ in answers
            ]
        seg_hidden = torch.cat([seg for _, seg, _ in answers])  # (S, D)
        prompts = model.seg_projector(seg_hidden)  # (S, C)
        width = max(1, max(expr.shape[0] for _, _, expr in answers))
        hidden = seg_hidden.new_zeros(len(answers), width, seg_hidden.shape[-1])  # (B, E, D)
        positions = torch.full((len(answers), width), -1, dtype=torch.long, device=device)
        for i, (_, _, expr) in enumerate(answers):
            hidden[i, : expr.shape[0]] = expr
            positions[i, : expr.shape[0]] = torch.arange(expr.shape[0], device=device)
        owner = torch.repeat_interleave(torch.arange(len(answers), device=device), torch.tensor(counts, device=device))
        language, language_mask = model.language_tokens(prompts, hidden, owner, positions[owner])
        pair_obj = torch.arange(total, device=device).repeat_interleave(k)  # (S*K,)
        pair_frame = torch.arange(k, device=device).repeat(total)
        seg = model.segment(
            record.sam, record.priors, language, language_mask, pair_obj, pair_frame,
            suppress_no_object=self.suppress_no_object,
        )
        logits = seg.mask_logits.view(total, k, *seg.mask_logits.shape[-2:])  # (S, K, 4h, 4w)
        energy = None if seg.mba_energy is None else seg.mba_energy.view(total, k, fh, fw).float().cpu().numpy()
        change = seg.language_change.view(total, k, fh, fw).float().cpu().numpy()
        per_answer, predictions, start = [], [], 0
        for (answer, _, _), n in zip(answers, counts):
            mine = logits[start : start + n]
            masks = [self._to_original(mine[s], record.height, record.width)[0] for s in range(n)] if record.media == "image" else []
            per_answer.append(mine)
            predictions.append(Prediction(
                answer=answer,
                masks=masks,
                key_frames=list(record.keys),
                prior=prior if n else None,
                mba_energy=None if energy is None or not n else energy[start : start + n],
                language_change=change[start : start + n] if n else None,
                key_logits=mine.float().cpu().numpy(),
            ))
            start += n
        return per_answer, predictions

    def _to_original(self, logits: torch.Tensor, height: int, width: int) -> np.ndarray:
        """(K, 4h, 4w) low-res logits → (K, H, W) bool at the original size."""
        up = F.interpolate(logits[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)
        return (up[:, 0] > 0).cpu().numpy()

    def _track(self, record: RecordFeatures, predictions: list[Prediction], key_logits: list[torch.Tensor]) -> None:
        """Seed SAM-2's tracker with the key-frame masks of every [SEG] of every prediction and
        propagate them all in one pass over the frames, all objects as one batch per frame
        (``salma.batched_tracking``; each frame is encoded once, the key frames not at all: their
        features come from ``record``); fills each prediction's masks. Under the SAM-2 settings
        that couple the objects of a batch, the package's per-object tracker runs instead."""
        counts = [logits.shape[0] for logits in key_logits]
        if sum(counts) == 0:
            return
        sam = self.model.sam.sam
        state = init_tracking_state(sam, record.sam_images, record.height, record.width,
                                    pinned=record.tracker_features())
        seeds = torch.cat(key_logits) > 0  # (S, K, 4h, 4w)
        unbatchable = unbatchable_settings(sam)
        if unbatchable:
            logger.info("SAM-2 tracks object by object: %s couples the objects of a batch", ", ".join(unbatchable))
            video = propagate_key_masks(sam, state, record.keys, seeds)  # (S, T, H, W)
        else:
            video = propagate_key_masks_batched(sam, state, record.keys, seeds)
        start = 0
        for prediction, n in zip(predictions, counts):
            prediction.masks = list(video[start : start + n])
            start += n

    def _precision(self):
        """Autocast to ``self.dtype`` (weights stay float32); nothing in float32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


@torch.no_grad()
def propagate_key_masks(sam, state: dict, keys: list[int], key_masks: torch.Tensor) -> np.ndarray:
    """Seed SAM-2's tracker in ``state`` with the masks ``key_masks`` (S, K, h, w) bool of S
    objects on the ascending key frames ``keys`` (``add_new_mask``) and propagate them with the
    package's ``propagate_in_video``: forwards from the first key frame, then backwards from it
    when it is not frame 0. Returns (S, T, video height, video width) bool.

    The package tracks object by object; ``salma.batched_tracking.propagate_key_masks_batched``
    gives the same masks with one batch of S objects per frame (what ``SalmaPredictor`` uses).
    This per-object path stays as the reference the tests compare against and for the SAM-2
    settings the batch cannot reproduce."""
    for s in range(key_masks.shape[0]):
        for j, t in enumerate(keys):
            sam.add_new_mask(state, frame_idx=t, obj_id=s, mask=key_masks[s, j])
    video = np.zeros((key_masks.shape[0], state["num_frames"], state["video_height"], state["video_width"]), dtype=bool)
    for reverse in [False] + ([True] if keys[0] > 0 else []):
        for t, _, masks in sam.propagate_in_video(state, start_frame_idx=keys[0], reverse=reverse):
            video[:, t] = (masks[:, 0] > 0).cpu().numpy()
    return video


class _PinnedFeaturesState(dict):
    """A tracking state whose feature cache always holds some frames.

    SAM-2's video predictor caches the backbone output of the last frame it encoded and *replaces*
    ``state["cached_features"]`` with a one-entry dict on every miss. The frames in ``pinned``
    (the key frames, already encoded by ``RecordFeatures``) are merged back into every
    replacement, so the tracker never encodes them; other frames keep the package's behaviour
    (each is encoded when propagation reaches it).
    """

    def __init__(self, *args, pinned: dict[int, tuple[torch.Tensor, dict]], **kwargs):
        super().__init__(*args, **kwargs)
        self.pinned = pinned

    def __setitem__(self, key, value):
        if key == "cached_features":
            value = {**value, **self.pinned}
        super().__setitem__(key, value)


@torch.no_grad()
def init_tracking_state(
    sam, images: torch.Tensor, height: int, width: int, *, pinned: dict[int, tuple[torch.Tensor, dict]] | None = None
) -> dict:
    """``SAM2VideoPredictor.init_state`` for frames already in memory (the package only reads a
    JPEG folder or an mp4). Same keys as sam2 1.1.0's ``init_state``; a test compares them.
    ``pinned``: frame index → ``(image, backbone_out)`` the tracker uses instead of encoding
    those frames (``_PinnedFeaturesState``)."""
    device = images.device
    state = {
        "images": images,
        "num_frames": images.shape[0],
        "offload_video_to_cpu": False,
        "offload_state_to_cpu": False,
        "video_height": height,
        "video_width": width,
        "device": device,
        "storage_device": device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }
    if pinned is not None:
        state = _PinnedFeaturesState(state, pinned=pinned)
        state["cached_features"] = {}
        return state
    sam._get_image_feature(state, frame_idx=0, batch_size=1)  # as init_state does: frame 0 cached
    return state


@dataclass
class SharedPrefix:
    """The language model's pass over the tokens every prompt of a record begins with."""

    length: int  # tokens
    cache: DynamicCache  # their keys and values, batch of one
    hidden: torch.Tensor  # (length, D) their last-layer states

    def expanded(self, batch: int) -> DynamicCache:
        """A copy of the cache for ``batch`` rows (generation appends to the copy, not to this)."""
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(batch)
        return cache


@dataclass
class _Row:
    """One question about one record, as the language model sees it."""

    record_index: int  # which of the records asked
    record: RecordFeatures
    prompt: list[int]  # the whole prompt's token ids
    positions: list[int]  # its expression tokens' positions in the prompt
    prefix: SharedPrefix | None  # its record's shared prefix
    forced: str | None  # the answer to teacher-force; None: generate

    @property
    def own(self) -> list[int]:
        """The prompt's tokens after its record's prefix."""
        return self.prompt[0 if self.prefix is None else self.prefix.length :]


@dataclass
class _BatchPrefix:
    """The prefixes of a batch of rows as one cache: row i's prefix keys and values, left-padded
    with zeros to the longest prefix, and the (B, P) mask of the positions that hold tokens."""

    cache: DynamicCache
    mask: torch.Tensor

    @classmethod
    def of(cls, rows: list[_Row]) -> "_BatchPrefix | None":
        """None when no row has a prefix; rows either all have one or none do."""
        prefixes = [row.prefix for row in rows]
        if all(p is None for p in prefixes):
            return None
        if any(p is None for p in prefixes):
            raise ValueError("a batch mixes rows with and without a shared prefix")
        distinct = list({id(p): p for p in prefixes}.values())
        if len(distinct) == 1:  # one record: the prefix repeated, no padding
            only = distinct[0]
            return cls(only.expanded(len(rows)), torch.ones(len(rows), only.length, dtype=torch.long,
                                                            device=only.hidden.device))
        which = torch.tensor([distinct.index(p) for p in prefixes], device=distinct[0].hidden.device)
        longest = max(p.length for p in distinct)
        cache = DynamicCache()
        for layer in range(len(distinct[0].cache.layers)):
            padded = [[F.pad(getattr(p.cache.layers[layer], part), (0, 0, longest - p.length, 0)) for p in distinct]
                      for part in ("keys", "values")]
            keys, values = (torch.cat(part).index_select(0, which) for part in padded)
            cache.update(keys, values, layer)
        mask = torch.zeros(len(distinct), longest, dtype=torch.long, device=which.device)
        for j, p in enumerate(distinct):
            mask[j, longest - p.length :] = 1
        return cls(cache, mask.index_select(0, which))


def _prompt_states(prefix: SharedPrefix | None, own: torch.Tensor, positions: list[int], *, offset: int) -> torch.Tensor:
    """Last-layer states (len(positions), D) at prompt ``positions``: those inside the shared
    prefix from its pass, the others from ``own`` ((L, D), the row's own tokens, which start at
    ``offset`` in it, after any padding)."""
    shared = 0 if prefix is None else prefix.length
    rows = [prefix.hidden[j] if j < shared else own[offset + j - shared] for j in positions]
    return torch.stack(rows) if rows else own.new_zeros(0, own.shape[-1])


def _pad(rows: list[list[int]], pad_id: int, *, left: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows → (B, L) ids and attention mask, padded on the left (generation: every row ends
    where the next token goes) or on the right (teacher forcing)."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), length), dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        span = slice(length - len(row), length) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long, device=device)
        mask[i, span] = 1
    return ids, mask


def _as_frames(frames: np.ndarray | list[np.ndarray]) -> list[np.ndarray]:
    if isinstance(frames, np.ndarray):
        if frames.ndim == 3:
            return [frames]
        if frames.ndim == 4:
            return list(frames)
        raise ValueError(f"expected an (H, W, 3) image or (T, H, W, 3) frames, got shape {frames.shape}")
    if not frames:
        raise ValueError("no frames given")
    return list(frames)
