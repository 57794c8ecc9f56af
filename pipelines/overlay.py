"""Masks drawn over the picture they belong to: what ``salma segment``, the demo and
``salma infer --overlays`` show a person.

``draw_overlay(frame, masks)`` blends each (H, W) mask into the frame in its own colour (45 %
opacity) and outlines it, so that a thin or small object stays visible. Pure numpy + OpenCV (for
the outline), no display.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# One colour per mask, in order (RGB, 0..1): blue, orange, green, magenta, cyan.
PALETTE = ((0.15, 0.45, 1.0), (1.0, 0.55, 0.1), (0.1, 0.85, 0.2), (0.9, 0.2, 0.8), (0.1, 0.85, 0.9))
OPACITY = 0.45


def blend(frame: np.ndarray, layers: Sequence[tuple[np.ndarray | None, tuple[float, float, float]]]) -> np.ndarray:
    """(H, W, 3) uint8 frame with each (mask, colour) blended in; a None mask is skipped."""
    out = frame.astype(np.float32) / 255.0  # (H, W, 3)
    for mask, colour in layers:
        if mask is None:
            continue
        m = np.asarray(mask, dtype=bool)
        out[m] = (1.0 - OPACITY) * out[m] + OPACITY * np.asarray(colour, dtype=np.float32)
    return (np.clip(out, 0.0, 1.0) * 255).astype(np.uint8)


def draw_overlay(frame: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
    """The frame (H, W, 3) uint8 RGB with every (H, W) bool mask blended and outlined."""
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"draw_overlay expects an (H, W, 3) frame, got shape {frame.shape}")
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(masks))]
    out = blend(frame, list(zip(masks, colours)))
    thickness = max(1, round(min(frame.shape[:2]) / 200))
    for mask, colour in zip(masks, colours):
        if mask.shape != frame.shape[:2]:
            raise ValueError(f"mask {mask.shape} does not match the frame {frame.shape[:2]}")
        contours, _ = cv2.findContours(np.asarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, tuple(int(255 * c) for c in colour), thickness)
    return out
