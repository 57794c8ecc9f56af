"""``salma data synth``: write the synthetic datasets (RefCOCO, MeViS, Ref-YouTube-VOS and
LLaVA formats, train / val / attention-drift splits) that the embedded default trains on."""

from __future__ import annotations

from salma.data.synthetic import main as synthetic_main


def main(argv: list[str] | None = None) -> int:
    return synthetic_main(argv, prog="salma data synth")


if __name__ == "__main__":
    raise SystemExit(main())
