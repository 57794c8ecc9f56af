"""``salma data synth``: write the synthetic datasets (RefCOCO, MeViS, Ref-YouTube-VOS and
LLaVA formats, train / val / attention-drift splits, optionally the clutter-lure splits) that the
embedded default trains on (``salma.data.synthetic``)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from pipelines import console
from salma.data.synthetic import ClutterCounts, write_synthetic


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="salma data synth", description=__doc__.split("\n\n")[0],
                                     formatter_class=console.DocstringHelp)
    parser.add_argument("--out", required=True, help="output folder (empty, or an earlier synthetic output)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=("small", "medium"), default="small")
    parser.add_argument("--num-images", type=int, default=None, help="override the number of train images")
    parser.add_argument("--num-videos", type=int, default=None, help="override the number of train videos")
    parser.add_argument(
        "--clutter", type=int, nargs=4, default=None, metavar=("TRAIN_IMAGES", "EVAL_IMAGES", "TRAIN_VIDEOS", "EVAL_VIDEOS"),
        help="also write the clutter-lure splits (clutter_train, lure, control) with these sizes",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    manifest = write_synthetic(
        args.out, seed=args.seed, size=args.size, num_images=args.num_images, num_videos=args.num_videos,
        clutter=ClutterCounts(**dict(zip(ClutterCounts.model_fields, args.clutter))) if args.clutter else None,
    )
    for name, info in manifest["datasets"].items():
        print(f"{name}: format={info['format']} root={info['root']} splits={','.join(info['splits'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
