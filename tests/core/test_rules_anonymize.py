"""The ``anonymize`` key of a routing rule (docs/ROUTING.md, anonymize then forward)."""

from __future__ import annotations

from pathlib import Path

import pytest

from minipacs.config import ConfigError, load_settings
from minipacs.core.rules import InvalidRule, rule_from_mapping
from minipacs.services.route_jobs import anonymized_note

BASE = {"name": "research", "when": "instance", "send_to": ["AI"]}


def test_true_a_list_of_options_or_nothing() -> None:
    assert rule_from_mapping(BASE).anonymize is None
    assert rule_from_mapping({**BASE, "anonymize": False}).anonymize is None
    basic = rule_from_mapping({**BASE, "anonymize": True})
    assert basic.anonymize == () and basic.to_dict()["anonymize"] is True
    chosen = rule_from_mapping({**BASE, "anonymize": ["retain-uids", "retain-long-modified-dates"]})
    assert chosen.anonymize == ("retain-long-modified-dates", "retain-uids")
    for rule in (basic, chosen):  # what the API stores reads back the same
        assert rule_from_mapping(rule.to_dict()) == rule
    assert "anonymize" not in rule_from_mapping(BASE).to_dict()


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ('"yes"', "anonymize must be true, false or a list"),
        ('["retain-everything"]', "unknown de-identification option"),
        ('["retain-long-full-dates", "retain-long-modified-dates"]', "not both"),
    ],
)
def test_bad_anonymize_stops_the_config_naming_the_rule(tmp_path: Path, value: str, words: str) -> None:
    config = tmp_path / "minipacs.toml"
    config.write_text(f'[[rules]]\nname = "r"\nwhen = "instance"\nsend_to = ["AI"]\nanonymize = {value}\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config, env={})
    assert "rule 'r'" in str(caught.value) and words in str(caught.value)


def test_a_prefetch_rule_cannot_anonymize() -> None:
    with pytest.raises(InvalidRule, match="not to prefetch"):
        rule_from_mapping(
            {"name": "p", "when": "scheduled", "prefetch_from": "Q", "prefetch_to": "V", "anonymize": True}
        )


def test_the_receipt_says_what_was_sent() -> None:
    assert anonymized_note(None) == ""
    assert anonymized_note([]).startswith("anonymized: a de-identified copy was sent (PS3.15 E.1 basic profile")
    assert "retain-uids" in anonymized_note(["retain-uids"])
