"""The registry of dataset formats: each reader declares, where it is defined, its format name,
the media its records hold and how predictions on it are scored.

    @register_format("refcoco", media="image", scoring="image")
    def read_refcoco(root, split, **options) -> list[SampleRecord]: ...

Everything else derives from the registry: ``read_source`` dispatches through it, a data config's
``format`` is checked against it when the config loads, and ``salma infer`` / ``salma evaluate``
take the formats that have a ``scoring``. A new format is one module with a decorated reader; it
is available once that module is imported (the built-in readers are imported by
``salma.data.sources``).

``media``: ``image`` or ``video`` (referring segmentation), ``mixed`` (images and videos in one
split, one's own data), ``conversation`` (question answering or captioning turns, training only).
``scoring``: ``image`` (cIoU / gIoU per sentence, the RefCOCO protocol), ``video`` (J&F per
expression, the DAVIS protocol), ``revos`` (``video`` plus ReVOS's robustness score), ``own``
(one's own data: masks written, scored only where the items carry masks), or ``None``: the format
has no masks to predict.
``splits``: ``splits(root, **options) -> list[str] | None``, the split names a folder holds (the
reader's options may move its files; None: its files do not depend on the split); an error for a
split that is not there lists them (``salma.data.sources.split_note``). ``splits_matching``
serves the formats with one annotation file per split.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from salma.data.record import SampleRecord

MediaKind = Literal["image", "video", "mixed", "conversation"]
Scoring = Literal["image", "video", "revos", "own"]
Reader = Callable[..., list[SampleRecord]]
SplitLister = Callable[..., list[str] | None]


@dataclass(frozen=True)
class SourceFormat:
    name: str
    read: Reader
    media: MediaKind
    scoring: Scoring | None
    splits: SplitLister | None = None


_FORMATS: dict[str, SourceFormat] = {}


def register_format(
    name: str, *, media: MediaKind, scoring: Scoring | None = None, splits: SplitLister | None = None
) -> Callable[[Reader], Reader]:
    """Decorate a reader ``read(root, split, **options) -> list[SampleRecord]`` to make ``name`` a
    source format; ``splits(root, **options)`` lists the splits a folder holds, called with the
    reader's keyword defaults under the given options (so it repeats none of them). A name is
    registered once; registering it again with another reader is an error (re-importing the same
    module is not)."""
    if media not in ("image", "video", "mixed", "conversation"):
        raise ValueError(f"format {name!r}: media={media!r} must be image, video, mixed or conversation")
    if scoring not in (None, "image", "video", "revos", "own"):
        raise ValueError(f"format {name!r}: scoring={scoring!r} must be image, video, revos, own or None")

    def register(read: Reader) -> Reader:
        known = _FORMATS.get(name)
        if known is not None and _qualname(known.read) != _qualname(read):
            raise ValueError(f"source format {name!r} is already registered by {_qualname(known.read)}")
        lister = None if splits is None else _with_defaults_of(read, splits)
        _FORMATS[name] = SourceFormat(name=name, read=read, media=media, scoring=scoring, splits=lister)
        return read

    return register


def source_format(name: str) -> SourceFormat:
    """The registered format ``name``; a ``ValueError`` naming the known ones otherwise."""
    try:
        return _FORMATS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown source format {name!r}; use one of {', '.join(source_format_names())}") from None


def source_format_names(*, scored: bool = False) -> tuple[str, ...]:
    """The registered format names, in registration order (only those with a scoring if
    ``scored``)."""
    return tuple(name for name, f in _FORMATS.items() if not scored or f.scoring is not None)


def splits_matching(root: str | Path, template: str) -> list[str] | None:
    """The split names ``S`` for which ``<root>/<template with {split} = S>`` exists, sorted.
    ``template`` is a path relative to ``root``; without ``{split}`` in it every split reads the
    same file, and there is nothing to list (None)."""
    if "{split}" not in template:
        return None
    root_dir = Path(root)
    head, _, tail = template.partition("{split}")
    pattern = re.escape(head) + r"(?P<split>[^/]+)" + re.escape(tail).replace(re.escape("{split}"), "(?P=split)")
    found = set()
    for path in root_dir.glob(template.replace("{split}", "*")):
        matched = re.fullmatch(pattern, path.relative_to(root_dir).as_posix())
        if matched:
            found.add(matched.group("split"))
    return sorted(found)


def _with_defaults_of(read: Reader, splits: SplitLister) -> SplitLister:
    """``splits`` called with ``read``'s keyword-only defaults, overridden by the given options."""
    defaults = {
        name: p.default for name, p in inspect.signature(read).parameters.items()
        if p.kind is p.KEYWORD_ONLY and p.default is not p.empty
    }
    return lambda root, **options: splits(root, **{**defaults, **options})


def _qualname(read: Any) -> str:
    return f"{getattr(read, '__module__', '?')}.{getattr(read, '__qualname__', repr(read))}"
