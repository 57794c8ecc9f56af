"""What the console shows: quiet by default, everything with ``--verbose``.

Quiet (the default): the pipelines print one progress line (or bar) per phase
(``pipelines.progress``), warnings and errors; log records below WARNING are dropped, Ray's
workers do not forward their output to the driver (``log_to_driver=False``: no "Starting
execution of Dataset", no "[repeated 2x across cluster]"), and Ray Data draws no progress bars
and prints no execution plans. Verbose (``salma --verbose …``, or ``SALMA_VERBOSE=1``): INFO logs
with timestamps, Ray's own output and progress bars as Ray prints them. The setting is kept in
the environment so that processes started from this one see it too.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from typing import Any

ENV_VAR = "SALMA_VERBOSE"
_FORMAT_VERBOSE = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_FORMAT_QUIET = "%(levelname)s %(name)s: %(message)s"
# Third-party progress bars (weight loading, artifact downloads, SAM-2's video propagation):
# off unless verbose. tqdm reads TQDM_* when it is imported; pipelines.progress asks for its bar.
# MLflow configures its own logger from MLFLOW_LOGGING_LEVEL when it is imported.
_QUIET_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "MLFLOW_LOGGING_LEVEL": "ERROR"}
_HANDLER = logging.StreamHandler()  # stderr, added to the root logger once
# Loggers that speak at INFO about their own machinery; kept at WARNING unless verbose.
_CHATTY = ("alembic", "httpx", "urllib3", "gradio")
# Libraries whose warnings are about themselves ("Setting accelerator to CPU", "Progress bars
# disabled", the cloudpickle notice of every logged model): ERROR unless verbose.
_SELF_ABSORBED = ("ray", "ray.train", "ray.tune", "mlflow", "DeepSpeed")


class _ErrorsUnlessVerbose(logging.Filter):
    """For a library that sets its logger's level itself when it is imported (DeepSpeed: its
    "Setting accelerator to CPU" warning comes during the import): a filter set beforehand stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        return is_verbose() or record.levelno >= logging.ERROR


_ERRORS_UNLESS_VERBOSE = _ErrorsUnlessVerbose()


def is_verbose() -> bool:
    return os.environ.get(ENV_VAR, "") not in ("", "0", "false")


def configure(*, verbose: bool | None = None) -> None:
    """Set up logging for a command (``verbose`` None: from the environment)."""
    if verbose is not None:
        if verbose:
            os.environ[ENV_VAR] = "1"
        else:
            os.environ.pop(ENV_VAR, None)
    loud = is_verbose()
    for name, value in _QUIET_ENV.items():
        if loud:
            os.environ.pop(name, None)
        else:
            os.environ.setdefault(name, value)
    level = logging.INFO if loud else logging.WARNING
    root = logging.getLogger()
    if _HANDLER not in root.handlers:
        root.addHandler(_HANDLER)
    _HANDLER.setFormatter(logging.Formatter(_FORMAT_VERBOSE if loud else _FORMAT_QUIET))
    _HANDLER.setLevel(level)
    root.setLevel(level)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.INFO if loud else logging.WARNING)
    for name in _SELF_ABSORBED:
        logging.getLogger(name).setLevel(logging.INFO if loud else logging.ERROR)
    deepspeed = logging.getLogger("DeepSpeed")
    if _ERRORS_UNLESS_VERBOSE not in deepspeed.filters:
        deepspeed.addFilter(_ERRORS_UNLESS_VERBOSE)
    if "ray.data" in sys.modules:  # otherwise quiet_ray_data runs where a dataset is about to
        quiet_ray_data()


def ray_init_options() -> dict[str, Any]:
    """Keyword arguments for ``ray.init`` that follow the verbosity."""
    loud = is_verbose()
    # Quiet: Ray's own warnings too (such as the token-authentication notice of every local start).
    return {"log_to_driver": loud, "logging_level": logging.INFO if loud else logging.ERROR}


def quiet_ray_data() -> None:
    """Ray Data in this process: no progress bars or execution banners unless verbose. Imports
    Ray Data first, whose import installs its own logging setup (INFO to the console): call it
    where a dataset is about to run."""
    from ray.data import DataContext

    context = DataContext.get_current()
    loud = is_verbose()
    context.enable_progress_bars = loud
    context.print_on_execution_start = loud
    # Ray Data's console handler only: its log files under the Ray session keep every record.
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setLevel(logging.INFO if loud else logging.ERROR)


_LITERAL = re.compile(r"``(.+?)``", flags=re.DOTALL)


class DocstringHelp(argparse.RawDescriptionHelpFormatter):
    """``--help`` text from a module docstring: laid out as written, without reST's literal
    markers (``salma export`` reads as salma export on the terminal)."""

    def _format_text(self, text: str) -> str:
        return super()._format_text(_LITERAL.sub(r"\1", text))

