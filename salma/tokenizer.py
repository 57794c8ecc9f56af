"""Tokenizers: the offline word-level tokenizer of the tiny preset, and special-token setup.

SALMA adds ``[SEG]`` (one per mask to produce), ``<p>``/``</p>`` (phrase spans in grounded
captions) and ``<vp>``/``</vp>`` (visual prompts) to the MLLM's vocabulary; the image placeholders
``<img>``, ``</img>`` and ``<IMG_CONTEXT>`` are InternVL's own.
"""

from __future__ import annotations

import logging

from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

SEG_TOKEN = "[SEG]"
PHRASE_START, PHRASE_END = "<p>", "</p>"
VP_START, VP_END = "<vp>", "</vp>"
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
UNK_TOKEN = "[UNK]"

SALMA_SPECIAL_TOKENS = [SEG_TOKEN, PHRASE_START, PHRASE_END, VP_START, VP_END]
INTERNVL_SPECIAL_TOKENS = [IMG_START, IMG_END, IMG_CONTEXT]

# The tiny preset's vocabulary: what the conversation templates and the synthetic datasets use,
# plus common English glue words. Anything else maps to [UNK]; the tiny preset is for tests and
# the CPU quickstart, not for open-vocabulary text.
_TINY_WORDS = """
user assistant system a an the this that these those it its is are was be there here of in on at to
from by with and or not no yes what which who where how many much color colour shape size object
objects thing things one ones please segment can you could would give me show find locate mark
output mask masks answer question image picture photo video frame frames scene sure ok okay result
referring expression describe briefly caption provide detail details highlight identify
red green blue yellow orange purple pink cyan magenta white black gray grey brown dark light bright
circle circles square squares triangle triangles star stars diamond diamonds rectangle ellipse shape
big large small tiny little medium huge biggest smallest larger smaller
left right top bottom middle center centre upper lower leftmost rightmost topmost corner side
moving moves move up down still static staying stays stationary towards toward going goes
first second third next near nearest far beside behind front above below between other another
only all both two three four five six seven eight nine ten zero
i s do does did has have had will shall for as if then so but also very more most less least
""".split()
_TINY_PUNCT = list(".,?!:;'\"()-_/")


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer built in code (no files, no downloads)."""
    specials = [PAD_TOKEN, UNK_TOKEN, IM_START, IM_END, *INTERNVL_SPECIAL_TOKENS, *SALMA_SPECIAL_TOKENS]
    words = list(dict.fromkeys(_TINY_WORDS + _TINY_PUNCT + [str(d) for d in range(10)]))
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    model = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    model.normalizer = normalizers.Lowercase()
    model.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=model, unk_token=UNK_TOKEN, pad_token=PAD_TOKEN, eos_token=IM_END
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials[2:]})
    return tokenizer


def tokenizer_name(config) -> str:
    """Where a model config's tokenizer comes from: ``mllm.tokenizer``, else ``mllm.path``, else
    the ``init_from`` export's MLLM folder, else the tiny offline tokenizer."""
    m = config.mllm
    if m.tokenizer or m.path:
        return m.tokenizer or m.path
    if config.init_from is not None:
        from salma.export import MLLM_DIR, init_from_folder

        return str(init_from_folder(config.init_from) / MLLM_DIR)
    return "tiny"


def _refuse_remote_code(name_or_path: str) -> None:
    """Never remote code: a tokenizer folder whose ``tokenizer_config.json`` points to its own
    .py files (``auto_map``) is refused, not run and not silently replaced by another class."""
    import json
    from pathlib import Path

    from salma.checkpoint_layout import CheckpointLayoutError

    config_path = Path(name_or_path) / "tokenizer_config.json"
    if not config_path.is_file():
        return
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointLayoutError(f"{config_path}: not a readable JSON file ({err})") from None
    if isinstance(config, dict) and "auto_map" in config:
        raise CheckpointLayoutError(
            f"{config_path}: the tokenizer asks for remote code (auto_map {config['auto_map']}), which SALMA never "
            "runs; use a folder converted by `salma convert` or a tokenizer transformers provides"
        )


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """``"tiny"`` → the offline tokenizer; otherwise a pretrained one with SALMA's tokens added."""
    if name_or_path == "tiny":
        return build_tiny_tokenizer()
    _refuse_remote_code(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    missing = [t for t in INTERNVL_SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        raise ValueError(
            f"tokenizer {name_or_path!r} lacks InternVL's image tokens {missing}: is it an InternVL checkpoint?"
        )
    added = tokenizer.add_special_tokens({"additional_special_tokens": SALMA_SPECIAL_TOKENS})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = PAD_TOKEN if PAD_TOKEN in tokenizer.get_vocab() else tokenizer.eos_token
    logger.info("added %d SALMA special tokens to %s", added, name_or_path)
    return tokenizer
