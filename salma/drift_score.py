"""Update-energy shares: how much of the language-driven change to SAM-2's features falls on the
target rather than on a known, more salient distractor.

This is an *energy* map of the feature update, not an attention map, and it is not a measure of
attention drift: in gate mode every position's attention sums to one, so the map is mostly the gate
squared times a near-constant vector (the prior's geometry), and "+CMA" scores the uniform value.
The attention-drift measures that every arm has, the baseline included, are in
``salma.drift_measures`` (on the clutter-lure splits). The metric names say what this is:
``eval/<split>/update_energy/*``.

MBA exists to stop "attention drift": cross-modal attention that moves the image features of a
salient object the sentence does *not* describe. On data whose distractors are known (the
synthetic drift splits put a larger, vivid distractor next to every target and record it in
``referent.meta["distractor_masks"]``), the drift can be measured directly on the map of where the
language changed the stride-16 SAM-2 features:

- with MBA on, the energy of the MBA update per feature cell (``Prediction.mba_energy``: the
  squared L2 norm over channels of ``γ·s·update``, the residual actually added);
- with MBA off (the Sa2VA baseline), the same measure on the language-conditioned feature change
  (``Prediction.language_change``), so both kinds of run are scored on one scale.

Definition. For one sample (one sentence and its key frames k = 1..K), with ``e_k`` the (h, w)
energy map of key frame k and ``c_k^T``, ``c_k^D`` the fractions of each feature cell covered by
the target and by the distractor masks (the (H, W) masks resized to (h, w) by area)::

    E_T = Σ_k Σ_cells e_k · c_k^T          E_D = Σ_k Σ_cells e_k · c_k^D
    target_share = E_T / (E_T + E_D)

and the split's score is the mean of ``target_share`` over its samples. 1 means all the energy
that lands on either object lands on the target; 0.5 means the distractor captures as much as the
target; lower means the attention drifted. Energy on the background enters neither term (it is
reported separately as ``outside_share``, the fraction of the total energy on neither object). A
sample with ``E_T + E_D = 0`` (for instance MBA with its zero-initialised γ still at 0) has no
share and is left out of the mean; a split without any such sample has no score.

``target_share`` compares amounts of energy, so a uniform map scores the target's share of the
two objects' area (the drift splits make the distractor the larger object: well below 0.5).
``density_share`` divides each sum by its object's area first (``A_T = Σ_k Σ_cells c_k^T``)::

    density_share = (E_T / A_T) / (E_T / A_T + E_D / A_D)

for which a uniform map scores 0.5 whatever the sizes; it is averaged over the samples where both
objects are visible on some key frame and receive energy.

Pure numpy + OpenCV, no torch: the predictor's diagnostics are numpy arrays already.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["DriftTerms", "update_energy_shares", "drift_terms", "mask_coverage", "region_energy"]


@dataclass(frozen=True)
class DriftTerms:
    """The energy sums of one sample: on the target, on the distractor(s), and in total."""

    target: float
    distractor: float
    total: float
    target_area: float = 0.0  # Σ coverage of the target, in feature cells
    distractor_area: float = 0.0

    @property
    def density_share(self) -> float | None:
        """(E_T / A_T) / (E_T / A_T + E_D / A_D), or None when an object is absent or no energy."""
        if self.target_area <= 0 or self.distractor_area <= 0:
            return None
        target, distractor = self.target / self.target_area, self.distractor / self.distractor_area
        return None if target + distractor <= 0 else target / (target + distractor)

    @property
    def target_share(self) -> float | None:
        """E_T / (E_T + E_D), or None when neither object received any energy."""
        inside = self.target + self.distractor
        return None if inside <= 0 else self.target / inside


def mask_coverage(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Fraction of each cell of an (h, w) grid covered by an (H, W) mask.

    mask: (H, W) bool (non-zero = inside); size: (h, w). Returns (h, w) float64 in [0, 1]:
    area interpolation (``cv2.INTER_AREA``), which for a downscale averages the pixels falling in
    each cell. The grid spans the whole frame because SAM-2 resizes frames to its square input
    without keeping the aspect ratio (``salma.image_transforms.resize_square``).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    h, w = int(size[0]), int(size[1])
    if mask.shape == (h, w):
        return mask.astype(bool).astype(np.float64)
    coverage = cv2.resize(mask.astype(bool).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)  # (h, w)
    return np.clip(coverage.astype(np.float64), 0.0, 1.0)


def region_energy(energy: np.ndarray, mask: np.ndarray | None) -> float:
    """Σ over cells of energy × the mask's coverage of the cell.

    energy: (h, w) non-negative; mask: (H, W) at the frame resolution, or None (no object: 0).
    """
    energy = np.asarray(energy, dtype=np.float64)
    if energy.ndim != 2:
        raise ValueError(f"energy must be an (h, w) map, got shape {energy.shape}")
    if mask is None:
        return 0.0
    return float(np.sum(energy * mask_coverage(mask, energy.shape)))


def drift_terms(
    energy: np.ndarray,
    target_masks: Sequence[np.ndarray] | np.ndarray,
    distractor_masks: Sequence[np.ndarray | None] | np.ndarray,
) -> DriftTerms:
    """The energy sums of one sample over its K key frames.

    energy: (K, h, w) map per key frame (``Prediction.mba_energy[s]`` or
    ``Prediction.language_change[s]`` for the s-th [SEG]); target_masks: K masks (H, W) of the
    referent on those frames; distractor_masks: K masks (H, W), the union of the distractors on
    each frame, or None where no distractor is visible.
    """
    energy = np.asarray(energy, dtype=np.float64)
    if energy.ndim != 3:
        raise ValueError(f"energy must be (K, h, w), got shape {energy.shape}")
    if len(target_masks) != energy.shape[0] or len(distractor_masks) != energy.shape[0]:
        raise ValueError(
            f"{energy.shape[0]} energy maps but {len(target_masks)} target and "
            f"{len(distractor_masks)} distractor masks; pass one of each per key frame"
        )
    if np.any(energy < 0):
        raise ValueError("energy maps must be non-negative (squared norms)")
    target = sum(region_energy(e, m) for e, m in zip(energy, target_masks, strict=True))
    distractor = sum(region_energy(e, m) for e, m in zip(energy, distractor_masks, strict=True))
    ones = np.ones(energy.shape[1:])
    return DriftTerms(
        target=target,
        distractor=distractor,
        total=float(energy.sum()),
        target_area=sum(region_energy(ones, m) for m in target_masks),
        distractor_area=sum(region_energy(ones, m) for m in distractor_masks),
    )


def update_energy_shares(samples: Iterable[DriftTerms]) -> dict[str, float]:
    """Aggregate a split: the mean target share and what it was computed from.

    Returns ``{"target_share": mean over scored samples, "density_share": mean area-normalised
    share (module docstring), "outside_share": mean fraction of the total energy on neither object,
    "scored": number of samples with a target share, "unscored": samples whose target and
    distractor received no energy}``; a share is NaN when no sample has it.
    """
    shares: list[float] = []
    densities: list[float] = []
    outside: list[float] = []
    unscored = 0
    for terms in samples:
        share = terms.target_share
        if share is None:
            unscored += 1
            continue
        shares.append(share)
        density = terms.density_share
        if density is not None:
            densities.append(density)
        # Target and distractor may overlap on a cell, so clip: "outside" is never negative.
        outside.append(max(0.0, 1.0 - (terms.target + terms.distractor) / terms.total) if terms.total > 0 else 0.0)
    return {
        "target_share": _mean(shares),
        "density_share": _mean(densities),
        "outside_share": _mean(outside),
        "scored": float(len(shares)),
        "unscored": float(unscored),
    }


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")
