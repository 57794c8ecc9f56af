"""The ``salma`` command: a thin shell over the pipeline functions.

    salma quickstart                         tiny SALMA on synthetic data, end to end
    salma data synth --out DIR               write the synthetic datasets
    salma train --config X.yaml [k=v ...]    distributed training (pipelines.train)
    salma tune --config X.yaml               ablation sweep (pipelines.tune)
    salma infer ...                          batch inference over a dataset (pipelines.infer)
    salma evaluate ...                       score predictions (pipelines.evaluate)
    salma export --checkpoint C --out DIR    a self-contained model folder (pipelines.export)
    salma segment IMAGE_OR_VIDEO "text"      one image or video, no Ray (pipelines.segment)
    salma demo [--model DIR]                 a Gradio app in the browser (pipelines.demo)
    salma convert internvl|sa2va SRC --out DIR   a released checkpoint → a folder SALMA loads

Each subcommand forwards its arguments to the ``main(argv)`` of its module, so
``salma train …`` and ``python -m pipelines.train …`` are the same thing.

Two flags work with every subcommand, anywhere on the line: ``--verbose`` shows every log line
(Ray's own included), ``--debug`` prints the full traceback of an error. Without ``--debug``, a
problem with what was asked for — a config file, an override, a missing file, a dataset that
does not parse, a checkpoint or output folder that cannot be used — is printed in one or two
lines naming the file or key and how to fix it, and ``salma`` exits with status 2.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator

from pipelines import console

COMMANDS = {
    "quickstart": ("pipelines.quickstart", "tiny SALMA on synthetic data: generate, train, evaluate, report"),
    "train": ("pipelines.train", "train on a Ray cluster with DeepSpeed"),
    "tune": ("pipelines.tune", "run an ablation sweep with Ray Tune"),
    "infer": ("pipelines.infer", "batch inference over a dataset with Ray Data"),
    "evaluate": ("pipelines.evaluate", "score predictions against ground truth"),
    "export": ("pipelines.export", "export a checkpoint as a self-contained model folder"),
    "segment": ("pipelines.segment", "segment one image, video or frame folder and draw the result"),
    "demo": ("pipelines.demo", "a browser demo: upload an image or video, type an expression"),
    "convert": ("pipelines.convert", "convert a released InternVL2.5 or Sa2VA folder (no remote code)"),
}
DATA_COMMANDS = {"synth": ("pipelines.synth", "write the synthetic datasets in the public formats")}
GLOBAL_FLAGS = ("--verbose", "--debug")
EXIT_USER_ERROR = 2


def _usage() -> str:
    lines = ["usage: salma [--verbose] [--debug] <command> [args]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += [f"  data {name:<7} {help_}" for name, (_, help_) in DATA_COMMANDS.items()]
    lines += ["", "`salma <command> --help` describes each command's arguments.",
              "--verbose shows every log line (Ray's included); --debug shows the traceback of an error."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = {flag for flag in GLOBAL_FLAGS if flag in argv}
    argv = [arg for arg in argv if arg not in GLOBAL_FLAGS]
    console.configure(verbose="--verbose" in flags)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    name = command
    if command == "data":
        if not rest or rest[0] not in DATA_COMMANDS:
            print(f"salma data: expected one of {', '.join(DATA_COMMANDS)}\n\n{_usage()}", file=sys.stderr)
            return EXIT_USER_ERROR
        module, _ = DATA_COMMANDS[rest[0]]
        name, rest = f"data {rest[0]}", rest[1:]
    elif command in COMMANDS:
        module, _ = COMMANDS[command]
    else:
        print(f"salma: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        result = importlib.import_module(module).main(rest)
    except KeyboardInterrupt:
        print(f"salma {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - sorted below: user errors in two lines, the rest re-raised
        message = user_error_message(err)
        if message is None or "--debug" in flags:
            raise
        print(f"salma {name}: {message}", file=sys.stderr)
        print("(run again with --debug for the full traceback)", file=sys.stderr)
        return EXIT_USER_ERROR
    return int(result or 0)


def user_error_message(err: BaseException) -> str | None:
    """The message to print for an error in what the user asked for, or None for anything else
    (a bug: its traceback is shown). Errors raised inside Ray workers arrive wrapped (Ray Train's
    worker-group error, Ray's task error); the original is looked for inside them."""
    for cause in _causes(err):
        if isinstance(cause, _user_error_types()):
            return _one_or_two_lines(_text_of(cause))
    return None


def _user_error_types() -> tuple[type[BaseException], ...]:
    from pipelines.checkpoint import InvalidCheckpointError
    from pipelines.config_errors import ConfigError
    from pipelines.data import TooManyBadRecords
    from pipelines.prediction_folder import OutputFolderError
    from salma.data.errors import BadRecordError, DatasetFormatError

    # BadRecordError: the pipelines skip and count bad records; one that reaches the command is
    # the file the user named (``salma segment broken.jpg``).
    types: list[type[BaseException]] = [
        BadRecordError, ConfigError, DatasetFormatError, InvalidCheckpointError, OutputFolderError, TooManyBadRecords,
        FileNotFoundError, NotADirectoryError, IsADirectoryError,
    ]
    for module, name in (("pipelines.infer", "InferenceError"), ("pipelines.evaluate", "EvaluationError"),
                         ("pipelines.demo", "MissingExtraError"), ("salma.checkpoint_layout", "CheckpointLayoutError")):
        found = getattr(sys.modules.get(module), name, None)  # only where that command was imported
        if found is not None:
            types.append(found)
    return tuple(types)


def _causes(err: BaseException) -> Iterator[BaseException]:
    """``err``, then what it wraps: Ray Train's worker and controller failures, Ray's task
    error cause, and Python's ``__cause__`` chain."""
    seen: set[int] = set()
    stack = [err]
    while stack:
        current = stack.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        wrapped = [getattr(current, "_base_exc", None), getattr(current, "controller_failure", None),
                   getattr(current, "cause", None), current.__cause__]
        failures = getattr(current, "worker_failures", None)
        if isinstance(failures, dict):
            wrapped += list(failures.values())
        stack += [w for w in wrapped if isinstance(w, BaseException)]


def _text_of(err: BaseException) -> str:
    if isinstance(err, FileNotFoundError) and err.filename is not None:
        return f"file not found: {err.filename}"
    if isinstance(err, (NotADirectoryError, IsADirectoryError)) and err.filename is not None:
        return f"{err.strerror.lower() if err.strerror else 'wrong kind of path'}: {err.filename}"
    return str(err).strip() or type(err).__name__


def _one_or_two_lines(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) <= 3:
        return "\n".join(lines)
    return "\n".join(lines[:2] + [f"... ({len(lines) - 2} more lines; --debug shows everything)"])


if __name__ == "__main__":
    sys.exit(main())
