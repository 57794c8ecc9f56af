"""The collated batch the SALMA model consumes.

The data pipeline (``pipelines.data``), the predictor and ``salma.testing.random_batch`` all build
this one structure. Shapes use: B samples, L tokens, N MLLM tiles, F SAM frames (all samples'
frames concatenated), O referred objects (one per ``[SEG]`` token), P object-frame pairs, E the
longest expression, S the SAM input size.

- ``input_ids``, ``attention_mask``, ``labels``: (B, L). ``labels`` is -100 except on answer tokens.
  Image placeholders (the MLLM's image-context token) are already expanded in ``input_ids``, in
  the order of the tiles in ``pixel_values``.
- ``pixel_values``: (N, 3, T, T) MLLM tiles, normalised for the vision encoder; N may be 0 for a
  text-only batch.
- ``sam_pixel_values``: (F, 3, S, S) SAM-2 frames, ImageNet-normalised, resized to the square SAM
  input (SAM-2 does not keep the aspect ratio).
- ``frame_sample_index``: (F,) the sample each SAM frame belongs to.
- ``seg_sample_index``: (O,) the sample of each object; objects are ordered as their ``[SEG]``
  tokens appear in ``input_ids`` read row by row, so object o's prompt comes from the o-th
  ``[SEG]`` token.
- ``expr_positions``: (O, E) positions (within its sample's row) of the tokens of the expression
  that referred to object o, padded with -1. Used for the MBA language tokens; an object whose
  expression is not in the prompt (e.g. grounded captioning) has an all -1 row.
- ``pair_object_index``, ``pair_frame_index``: (P,) each supervised (object, frame) pair.
- ``gt_masks``: (P, S, S) bool ground truth of each pair at the SAM input size.
- ``mask_weight``: (P,) float, 1 for a supervised pair, 0 for a pair that only exists so that
  every parameter receives a gradient (see ``SalmaModel``).
- optional, from data that annotates them (the synthetic clutter-lure splits), None otherwise:
  ``frame_object_masks`` (F, S, S) the union of every annotated object on each frame (the oracle
  prior, ``mba.prior: oracle``), ``frame_clutter_masks`` (F, S, S) the background clutter region,
  ``object_lure`` (O,) int8: 1 when the object's clutter carries its expression's attribute, 0 when
  not, -1 unknown (the drift measures, ``salma.drift_measures``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


OPTIONAL_FIELDS = ("frame_object_masks", "frame_clutter_masks", "object_lure")


@dataclass
class SalmaBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor
    sam_pixel_values: torch.Tensor
    frame_sample_index: torch.Tensor
    seg_sample_index: torch.Tensor
    expr_positions: torch.Tensor
    pair_object_index: torch.Tensor
    pair_frame_index: torch.Tensor
    gt_masks: torch.Tensor
    mask_weight: torch.Tensor
    # Frame-level annotations only some data has (the synthetic clutter-lure splits); None where
    # any sample of the batch lacks them. (F, S, S) bool each; object_lure (O,) int8.
    frame_object_masks: torch.Tensor | None = None
    frame_clutter_masks: torch.Tensor | None = None
    object_lure: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_objects(self) -> int:
        return self.seg_sample_index.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "SalmaBatch":
        """Move every tensor; ``dtype`` applies to the floating-point image tensors only."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                moved[f.name] = None
            elif dtype is not None and f.name in ("pixel_values", "sam_pixel_values"):
                moved[f.name] = value.to(device=device, dtype=dtype)
            else:
                moved[f.name] = value.to(device)
        return SalmaBatch(**moved)

    def as_dict(self) -> dict[str, torch.Tensor]:
        """Every field that holds a tensor (the optional frame-level ones only when present)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, data: dict[str, torch.Tensor]) -> "SalmaBatch":
        names = {f.name for f in fields(cls)}
        missing = names - set(data) - set(OPTIONAL_FIELDS)
        unknown = set(data) - names
        if missing or unknown:
            raise ValueError(
                f"SalmaBatch.from_dict: missing fields {sorted(missing)}, unknown fields {sorted(unknown)}"
            )
        return cls(**{k: data[k] for k in names if k in data})

    def validate(self) -> None:
        """Check the cross-field invariants; raises ValueError naming the first broken one."""
        B, L = self.input_ids.shape
        if self.attention_mask.shape != (B, L) or self.labels.shape != (B, L):
            raise ValueError("input_ids, attention_mask and labels must all be (B, L)")
        F = self.sam_pixel_values.shape[0]
        if self.frame_sample_index.shape != (F,):
            raise ValueError("frame_sample_index must have one entry per SAM frame")
        O = self.seg_sample_index.shape[0]
        if self.expr_positions.shape[0] != O:
            raise ValueError("expr_positions must have one row per object")
        P = self.pair_object_index.shape[0]
        for name in ("pair_frame_index", "mask_weight"):
            if getattr(self, name).shape != (P,):
                raise ValueError(f"{name} must have one entry per object-frame pair")
        if self.gt_masks.shape[0] != P:
            raise ValueError("gt_masks must have one mask per object-frame pair")
        if P and (int(self.pair_object_index.max()) >= O or int(self.pair_frame_index.max()) >= F):
            raise ValueError("pair indices point past the objects or frames of the batch")
        if P and not torch.equal(
            self.seg_sample_index[self.pair_object_index],
            self.frame_sample_index[self.pair_frame_index],
        ):
            raise ValueError("an object-frame pair joins an object and a frame of different samples")
        for name in ("frame_object_masks", "frame_clutter_masks"):
            value = getattr(self, name)
            if value is not None and value.shape[0] != F:
                raise ValueError(f"{name} must have one mask per SAM frame")
        if self.object_lure is not None and self.object_lure.shape != (O,):
            raise ValueError("object_lure must have one entry per object")
