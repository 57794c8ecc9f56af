"""The console: one progress line per phase (step, loss, samples/s, data wait, time left), quiet
Ray unless ``--verbose``, and the quickstart's closing summary."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

from pipelines import console
from pipelines.progress import Progress, TrainProgressRelay, post_progress
from pipelines.quickstart import summary


def test_lines_carry_step_loss_throughput_data_wait_and_time_left():
    stream = io.StringIO()
    progress = Progress("train", total=100, unit="step", stream=stream, every_s=0.0, bar=False)
    relay = TrainProgressRelay(progress, use_ray=False)  # local mode: the worker runs in this process
    post_progress(relay.handle, {"step": 25, "loss/total": 0.81234, "samples_per_s": 22.41, "data_wait_fraction": 0.04})
    relay.close()
    first, last = stream.getvalue().splitlines()  # the line at step 25, then the closing one
    assert first.startswith("train: step 25/100 (25%), loss 0.8123, 22.4 samples/s, data wait 4%, ")
    assert first.endswith(" left")
    assert last.startswith("train: step 25/100 (25%)") and "(done in " in last


def test_lines_are_spaced_unless_a_phase_ends():
    stream = io.StringIO()
    progress = Progress("infer x", total=10, unit="record", stream=stream, every_s=3600, bar=False)
    for done in range(1, 11):
        progress.update(done, **{"frames/s": 2.0})
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[-1].startswith("infer x: record 10/10 (100%), 2.0 frames/s (done in")


def test_quiet_by_default_verbose_on_request(monkeypatch):
    monkeypatch.delenv(console.ENV_VAR, raising=False)
    for name in ("TQDM_DISABLE", "MLFLOW_LOGGING_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    console.configure(verbose=False)
    assert console.ray_init_options() == {"log_to_driver": False, "logging_level": logging.ERROR}
    assert logging.getLogger("mlflow").level == logging.ERROR
    import os

    assert os.environ["TQDM_DISABLE"] == "1"
    console.configure(verbose=True)
    assert console.ray_init_options() == {"log_to_driver": True, "logging_level": logging.INFO}
    assert "TQDM_DISABLE" not in os.environ
    console.configure(verbose=False)


def test_quickstart_summary_names_each_phase_and_the_folders():
    text = summary({"data": 10.0, "training": 600.0, "export": 6.0, "evaluation": 60.0}, 700.0,
                   run_dir="runs/q-1", export_dir=Path("runs/q-1/export"), eval_dir=Path("runs/q-1/eval"),
                   run_id="abc", uri="sqlite:///x/mlflow.db", model_uri="runs:/abc/model")
    assert text.splitlines()[0] == ("time: data 0.2 min, training 10.0 min, export 0.1 min, evaluation 1.0 min; "
                                    "total 11.7 min")
    assert "runs/q-1/export" in text and "runs/q-1/eval" in text and "runs:/abc/model" in text


def test_deepspeeds_import_time_warning_is_quiet_unless_verbose():
    """DeepSpeed sets its logger's level while it is imported and warns "Setting accelerator to
    CPU" during that import on a machine without a GPU; the quiet console still drops it."""
    import subprocess
    import sys

    import torch

    code = ("import sys; from pipelines import console; console.configure(verbose=sys.argv[1] == 'loud'); "
            "import deepspeed")
    warning = "Setting accelerator to CPU"
    outputs = {}
    for mode in ("quiet", "loud"):
        done = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=300, check=False,
                              env={k: v for k, v in os.environ.items() if k != console.ENV_VAR})
        assert done.returncode == 0, done.stderr[-2000:]
        outputs[mode] = done.stdout + done.stderr
    assert warning not in outputs["quiet"]
    if not torch.cuda.is_available():  # with a GPU there is nothing to warn about
        assert warning in outputs["loud"]
