"""The per-expression inference path: every expression re-encodes its record and runs the
language model twice.

This is how ``SalmaPredictor`` worked before it shared a record's work across its expressions
(``salma.predictor``): for one expression it runs InternVL's vision tower on the tiles, decodes
the answer with ``generate``, runs a second full forward over prompt + answer to read the
``[SEG]`` hidden states, encodes the key frames with SAM-2, and, for a video, builds a tracking
state that encodes every frame again. It is kept, unchanged in what it computes, as the
reference that the batched path is compared against (tests) and benchmarked against
(``benchmarks/infer_throughput.py --mode record``); nothing else calls it.
"""

from __future__ import annotations

import torch

from salma.conversation import Round, encode_rounds, referring_round
from salma.data.examples import mllm_tiles, tokens_per_image
from salma.image_transforms import resize_square, to_normalized_tensor
from salma.predictor import (
    Prediction,
    SalmaPredictor,
    _as_frames,
    answer_text,
    init_tracking_state,
    key_frame_indices,
    propagate_key_masks,
)
from salma.tokenizer import IM_END


def segment_per_expression(
    predictor: SalmaPredictor, frames, expression: str, *, generate: bool = True
) -> Prediction:
    """``predictor.segment(frames, expression)`` computed the per-expression way (module docstring)."""
    frames = _as_frames(frames)
    media = "video" if len(frames) > 1 else "image"
    question = referring_round(expression, media=media, rng=None, answer=False)
    forced = None if generate else referring_round(expression, media=media, rng=None).answer
    return _run(predictor, frames, question, forced)


@torch.no_grad()
def _run(predictor: SalmaPredictor, frames, question: Round, forced_answer: str | None) -> Prediction:
    model, device, geometry = predictor.model, predictor.device, predictor.geometry
    num_frames = len(frames)
    media = "video" if num_frames > 1 else "image"
    keys = key_frame_indices(num_frames, predictor.num_key_frames, predictor.key_frame_sampling) if media == "video" else [0]
    key_images = [frames[i] for i in keys]
    tiles = mllm_tiles(key_images, media, geometry)
    encoded = encode_rounds(predictor.tokenizer, [question], tokens_per_image=tokens_per_image(len(tiles), media, geometry))
    prompt = torch.tensor([encoded.input_ids], device=device)
    pixel_values = to_normalized_tensor(tiles).to(device)
    if forced_answer is None:
        generated = _generate(predictor, prompt, pixel_values)
    else:
        generated = predictor.tokenizer(forced_answer + IM_END, add_special_tokens=False).input_ids
    answer = answer_text(predictor.tokenizer, generated)
    full = torch.cat([prompt, torch.tensor([generated], dtype=torch.long, device=device)], dim=1)
    out = model.mllm(input_ids=full, attention_mask=torch.ones_like(full), pixel_values=pixel_values)
    seg_hidden = model.seg_hidden_states(out.hidden_states, full)  # (S, D)
    height, width = frames[0].shape[:2]
    if seg_hidden.shape[0] == 0:
        return Prediction(answer=answer, masks=[], key_frames=keys)
    num_segs = seg_hidden.shape[0]
    prompts = model.seg_projector(seg_hidden)  # (S, C)
    expr = torch.tensor(encoded.expression_positions[0] or [-1], device=device)
    language, language_mask = model.language_tokens(
        prompts, out.hidden_states, torch.zeros(num_segs, dtype=torch.long, device=device),
        expr[None].expand(num_segs, -1),
    )
    sam_frames = to_normalized_tensor([resize_square(f, geometry.sam_size) for f in key_images]).to(device)
    features = model.encode_frames(sam_frames)
    priors = model.frame_priors(features)
    k = len(keys)
    pair_obj = torch.arange(num_segs, device=device).repeat_interleave(k)  # (S*K,)
    pair_frame = torch.arange(k, device=device).repeat(num_segs)
    seg = model.segment(
        features, priors, language, language_mask, pair_obj, pair_frame, suppress_no_object=predictor.suppress_no_object
    )
    key_logits = seg.mask_logits.view(num_segs, k, *seg.mask_logits.shape[-2:])  # (S, K, 4h, 4w)
    if media == "image":
        masks = [predictor._to_original(key_logits[s], height, width)[0] for s in range(num_segs)]
    else:
        images = to_normalized_tensor([resize_square(f, geometry.sam_size) for f in frames]).to(device)
        state = init_tracking_state(model.sam.sam, images, height, width)
        masks = list(propagate_key_masks(model.sam.sam, state, keys, key_logits > 0))
    fh, fw = features.image_embed.shape[-2:]
    return Prediction(
        answer=answer,
        masks=masks,
        key_frames=keys,
        prior=None if priors is None else torch.sigmoid(priors[:, 0]).cpu().numpy(),
        mba_energy=None if seg.mba_energy is None else seg.mba_energy.view(num_segs, k, fh, fw).cpu().numpy(),
        language_change=seg.language_change.view(num_segs, k, fh, fw).cpu().numpy(),
        key_logits=key_logits.float().cpu().numpy(),
    )


def _generate(predictor: SalmaPredictor, prompt: torch.Tensor, pixel_values: torch.Tensor) -> list[int]:
    """Greedy decoding until ``<|im_end|>`` or ``max_new_tokens`` (vision tower included)."""
    eos = predictor.tokenizer.convert_tokens_to_ids(IM_END)
    out = predictor.model.mllm.model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        pixel_values=pixel_values,
        max_new_tokens=predictor.max_new_tokens,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=predictor.tokenizer.pad_token_id,
        # An image placeholder in the answer would have no image features in the second forward.
        suppress_tokens=[predictor.model.mllm.image_token_id],
    )
    return out[0, prompt.shape[1] :].tolist()
