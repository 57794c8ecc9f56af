"""The ``salma`` command: a thin shell over the pipeline functions.

    salma quickstart                         tiny SALMA on synthetic data, end to end
    salma data synth --out DIR               write the synthetic datasets
    salma train --config X.yaml [k=v ...]    distributed training (pipelines.train)
    salma tune --config X.yaml               ablation sweep (pipelines.tune)
    salma infer ...                          batch inference over a dataset (pipelines.infer)
    salma evaluate ...                       score predictions (pipelines.evaluate)
    salma export --checkpoint C --out DIR    a self-contained model folder (pipelines.export)

Each subcommand forwards its arguments to the ``main(argv)`` of its module, so
``salma train …`` and ``python -m pipelines.train …`` are the same thing.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "quickstart": ("pipelines.quickstart", "tiny SALMA on synthetic data: generate, train, evaluate, report"),
    "train": ("pipelines.train", "train on a Ray cluster with DeepSpeed"),
    "tune": ("pipelines.tune", "run an ablation sweep with Ray Tune"),
    "infer": ("pipelines.infer", "batch inference over a dataset with Ray Data"),
    "evaluate": ("pipelines.evaluate", "score predictions against ground truth"),
    "export": ("pipelines.export", "export a checkpoint as a self-contained model folder"),
}
DATA_COMMANDS = {"synth": ("pipelines.synth", "write the synthetic datasets in the public formats")}


def _usage() -> str:
    lines = ["usage: salma <command> [args]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += [f"  data {name:<7} {help_}" for name, (_, help_) in DATA_COMMANDS.items()]
    lines += ["", "`salma <command> --help` describes each command's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command == "data":
        if not rest or rest[0] not in DATA_COMMANDS:
            print(f"salma data: expected one of {', '.join(DATA_COMMANDS)}\n\n{_usage()}", file=sys.stderr)
            return 2
        module, _ = DATA_COMMANDS[rest[0]]
        rest = rest[1:]
    elif command in COMMANDS:
        module, _ = COMMANDS[command]
    else:
        print(f"salma: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    result = importlib.import_module(module).main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
