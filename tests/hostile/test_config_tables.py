"""Hostile ``[[rules]]``, ``[[retention]]`` and ``[[compression]]`` tables: each is a ConfigError naming
the table and the key at start, never a rule that raises at every run (docs/HOSTILE_INPUT.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from minipacs.config import ConfigError, load_settings
from minipacs.core.retention import MAX_OLDER_THAN_DAYS
from minipacs.core.rules import MAX_STABLE_SECONDS

RETENTION = '[[retention]]\nname = "r"\nby = "arrival"\n'
COMPRESSION = '[[compression]]\nname = "c"\nsyntax = "rle"\n'
RULE = '[[rules]]\nname = "a"\nwhen = "stable"\nstow_to = ["https://pacs.example/dicom-web"]\n'


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "minipacs.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n{text}\n')
    return load_settings(path, env={})


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (RETENTION + f"older_than_days = {MAX_OLDER_THAN_DAYS + 1}", f"at most {MAX_OLDER_THAN_DAYS}"),
        (RETENTION + "older_than_days = 1e17", f"at most {MAX_OLDER_THAN_DAYS}"),
        (RETENTION + "older_than_days = inf", "positive number of days"),
        (RETENTION + "older_than_days = nan", "positive number of days"),
        (RETENTION + "older_than_days = 0", "positive number of days"),
        (COMPRESSION + 'match = { Foo = "x" }', "'Foo' is not a DICOM keyword"),
        (COMPRESSION + "older_than_days = inf", "from 0 to 36500"),
        (RULE + f"stable_seconds = {MAX_STABLE_SECONDS + 1}", f"at most {MAX_STABLE_SECONDS}"),
        (RULE + "stable_seconds = -1", "more than 0"),
        (RULE + "stable_seconds = nan", "more than 0"),
        ('[[rules]]\nname = "a"\nwhen = "instance"\nstow_to = ["file:///etc/passwd"]', "not an http:// or https://"),
    ],
)
def test_a_table_past_its_limit_is_a_config_error(tmp_path: Path, text: str, said: str) -> None:
    with pytest.raises(ConfigError, match="number 1") as caught:
        load(tmp_path, text)
    assert said in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        RETENTION + f"older_than_days = {MAX_OLDER_THAN_DAYS}",
        COMPRESSION + 'match = { Modality = "CT" }',
        RULE + f"stable_seconds = {MAX_STABLE_SECONDS}",
    ],
)
def test_a_table_at_its_limit_is_taken(tmp_path: Path, text: str) -> None:
    load(tmp_path, text)
