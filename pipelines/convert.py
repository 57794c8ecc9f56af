"""``salma convert``: released checkpoints → folders SALMA loads (``salma.internvl_conversion``,
``salma.sa2va_conversion``). No remote code is executed and nothing is downloaded.

    salma convert internvl checkpoints/InternVL2_5-1B --out checkpoints/InternVL2_5-1B-hf
    salma convert sa2va checkpoints/Sa2VA-1B --out checkpoints/Sa2VA-1B-salma
    salma convert sa2va SRC --out DST --sam-config sam2_hiera_t --sam-override ++model.image_size=128 ...

``internvl`` writes a transformers-native InternVL folder (``model.mllm.path``); ``sa2va`` writes a
SALMA export with Mask-Biased Attention off (``SalmaPredictor.from_pretrained``, ``salma infer
--model``, ``model.init_from``). Both print what they read, wrote and checked. See
docs/weights.md.
"""

from __future__ import annotations

import argparse

from pipelines import console


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="salma convert", description=__doc__,
                                     formatter_class=console.DocstringHelp)  # fmt: skip
    kinds = parser.add_subparsers(dest="kind", required=True)
    internvl = kinds.add_parser("internvl", help="a released InternVL2.5 folder -> a transformers-native one")
    sa2va = kinds.add_parser("sa2va", help="a released Sa2VA folder -> a SALMA export (the Sa2VA baseline)")
    for sub in (internvl, sa2va):
        sub.add_argument("source", help="the released folder (config.json, safetensors, tokenizer files)")
        sub.add_argument("--out", required=True, help="a new folder for the result")
        sub.add_argument("--tokenizer", help="a transformers tokenizer folder to use instead of the release's "
                         "(needed for InternLM2-based releases, whose tokenizer is remote code)")  # fmt: skip
    sa2va.add_argument("--sam-config", help="the sam2 package config of the release's SAM-2 "
                       "(default sam2_hiera_l, SAM-2.0 Hiera-L as Sa2VA ships)")  # fmt: skip
    sa2va.add_argument("--sam-override", action="append", default=[], metavar="KEY=VALUE",
                       help="Hydra override of that config, repeatable (as model.sam.overrides takes them)")  # fmt: skip
    args = parser.parse_args(argv)
    console.configure()
    # A release that cannot be converted raises ConversionError (a CheckpointLayoutError), which
    # the salma command prints in two lines naming the tensor, field or file.
    if args.kind == "internvl":
        from salma.internvl_conversion import convert_internvl

        summary = convert_internvl(args.source, args.out, tokenizer=args.tokenizer)
    else:
        from salma.sa2va_conversion import convert_sa2va

        summary = convert_sa2va(args.source, args.out, sam_config=args.sam_config,
                                sam_overrides=args.sam_override, tokenizer=args.tokenizer)  # fmt: skip
    print("\n".join(summary.lines()))
    if args.kind == "internvl":
        print(f"use it as model.mllm.path: {args.out}")
    else:
        print(f"load it with SalmaPredictor.from_pretrained({args.out!r}), salma infer --model {args.out}, "
              f"or start training from it with model.init_from: {args.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
