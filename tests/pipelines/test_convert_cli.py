"""``salma convert`` through the ``salma`` command: a refusal is printed in a line or two naming
what to run instead, with exit status 2; a conversion prints its summary."""

from __future__ import annotations

import json

from pipelines.cli import main
from salma.release_replicas import INTERNVL2_5_1B, internvl_release_config, tiny_sizes, write_internvl_release


def test_a_sa2va_release_given_to_convert_internvl_is_pointed_to_convert_sa2va(tmp_path, capsys):
    (tmp_path / "Sa2VA-1B").mkdir()
    config = internvl_release_config(INTERNVL2_5_1B, architecture="Sa2VAChatModel")
    (tmp_path / "Sa2VA-1B" / "config.json").write_text(json.dumps(config))
    assert main(["convert", "internvl", str(tmp_path / "Sa2VA-1B"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("salma convert:") and "salma convert sa2va" in err
    assert not (tmp_path / "out").exists()


def test_a_conversion_prints_its_summary(tmp_path, capsys):
    src = write_internvl_release(tmp_path / "release", tiny_sizes())
    assert main(["convert", "internvl", str(src), "--out", str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out
    assert "checked every source tensor mapped" in out and "use it as model.mllm.path" in out
