"""A dataset format defined entirely in this one module, as a user would add one: a JSON file
``<root>/<split>.json`` of images, each with boxes and the sentences that refer to them. The box
is the referent's mask. Importing the module registers the format ``toy_boxes``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from salma.data.confinement import confined_path
from salma.data.errors import OnBad, raise_bad_record
from salma.data.formats import register_format
from salma.data.masks import encode_mask
from salma.data.record import Referent, SampleRecord


@register_format("toy_boxes", media="image", scoring="image")
def read_toy_boxes(
    root: str | Path, split: str, *, on_bad: OnBad = raise_bad_record, allow_outside_root: bool = False
) -> list[SampleRecord]:
    root = Path(root)
    records = []
    for entry in json.loads((root / f"{split}.json").read_text()):
        height, width = entry["height"], entry["width"]
        referents = []
        for thing in entry["things"]:
            x0, y0, x1, y1 = thing["box"]
            mask = np.zeros((height, width), dtype=bool)
            mask[y0:y1, x0:x1] = True
            referents.append(Referent(ref_id=thing["id"], object_ids=[0], expressions=list(thing["sentences"]),
                                      masks=[encode_mask(mask)]))
        image = confined_path(root, entry["image"], allow_outside_root=allow_outside_root)
        records.append(SampleRecord(source="toy_boxes", split=split, sample_id=entry["id"], media="image",
                                    height=height, width=width, frames=[str(image)], referents=referents))
    return records
