"""SALMA: language-guided segmentation with an InternVL2.5 MLLM, SAM-2 and Mask-Biased Attention.

The model library. It depends on PyTorch, transformers, peft and sam2 only — never on ray,
mlflow or deepspeed (the platform in ``pipelines`` adds those). Heavy submodules load on first
use, so ``import salma`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "build_salma": "salma.builder",
    "BuiltSalma": "salma.builder",
    "SalmaConfig": "salma.config",
    "resolve_model_config": "salma.config",
    "preset_config": "salma.config",
    "SalmaModel": "salma.model",
    "SalmaBatch": "salma.batch",
    "SalmaPredictor": "salma.predictor",
}

if TYPE_CHECKING:
    from salma.batch import SalmaBatch
    from salma.builder import BuiltSalma, build_salma
    from salma.config import SalmaConfig, preset_config, resolve_model_config
    from salma.model import SalmaModel
    from salma.predictor import SalmaPredictor


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'salma' has no attribute {name!r}")


__all__ = sorted(_LAZY)
