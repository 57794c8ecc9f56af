"""docs/finetune.md's commands, run as they stand on a small own-data folder the test writes
(with training shrunk by overrides): train, export + register, infer with overlays, evaluate."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from salma.testing import write_own_data_example

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- tests/pipelines/test_finetune_tutorial.py runs the block below"
SMALLER = ("train.num_workers=0 train.max_steps=2 train.checkpoint_every=2 train.log_every=1 "
           "train.batch_size_per_worker=1 data.num_frames=2 data.max_objects=2 data.cpus_per_task=0.25")

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def tutorial_commands() -> str:
    text = (ROOT / "docs" / "finetune.md").read_text()
    after = text[text.index(MARKER):]
    return re.search(r"```bash\n(.*?)```", after, re.S).group(1)


def test_the_tutorial_commands_fine_tune_evaluate_and_export(ray_cluster, tmp_path):
    commands = tutorial_commands()
    assert commands.startswith("salma train --config experiments/finetune_own_data.yaml\n")
    commands = commands.replace("experiments/finetune_own_data.yaml\n", f"experiments/finetune_own_data.yaml {SMALLER}\n", 1)
    (tmp_path / "experiments").mkdir()
    shutil.copy(ROOT / "experiments" / "finetune_own_data.yaml", tmp_path / "experiments")
    write_own_data_example(tmp_path / "data" / "my_data", num_images=4, num_videos=2)
    script = f'set -euo pipefail\nsalma() {{ "{sys.executable}" -m pipelines.cli "$@"; }}\n{commands}'
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    [run] = list((tmp_path / "runs").glob("finetune_own_data-*"))
    assert (run / "export" / "config.json").is_file() and (run / "export" / "README.md").is_file()
    results = json.loads((run / "val" / "results.json").read_text())
    assert results and all((run / "val" / p).is_file() for entry in results for p in entry["masks"])
    assert list((run / "val" / "overlays").rglob("*.png")) and list((run / "val" / "overlays").rglob("*.jpg"))
    assert "| own_data_val | images |" in (run / "val" / "scores.md").read_text()
    assert "cIoU" in done.stdout and "J&F" in done.stdout  # evaluate printed its table

    import mlflow

    info = json.loads((run / "run.json").read_text())
    client = mlflow.MlflowClient(info["tracking_uri"])
    [ciou] = client.get_metric_history(info["mlflow_run_id"], "eval/own_data_val/images/ciou")
    assert ciou.step == 2  # the run's last training step
    assert client.get_registered_model("my-segmenter").latest_versions
