"""Rules as the config file gives them (core/rules.py): parsing, validation at start, AE filters."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any, cast

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from minipacs.bootstrap import build_app
from minipacs.config import ConfigError, Settings, load_settings
from minipacs.core.archive import Archive
from minipacs.core.jobs import JobQueue
from minipacs.core.model import Origin
from minipacs.core.nodes import Node
from minipacs.core.routing import Router, _flat
from minipacs.core.rules import OnCorrection, Rule, RuleBook, Trigger, rule_from_mapping, rules_from_tables
from minipacs.core.worklist import matches
from minipacs.index import routing_repo
from tests.dicomgen import write_ct

GOOD = """
[[rules]]
name = "ct-to-ai"
when = "stable"
stable_seconds = 30
match = { Modality = "CT", StudyDate = "20240101-", BodyPartExamined = ["HEAD", "NECK"] }
calling_aet = "CT0?"
called_aet = "MINI*"
send_to = ["AI_NODE"]
stow_to = ["https://dicomweb.example/dicom-web/"]
"""


def test_a_rules_table_of_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "minipacs.toml"
    config.write_text(GOOD)
    (rule,) = load_settings(config, env={}).rules
    assert rule.when is Trigger.STABLE and rule.stable_seconds == 30 and rule.level == "study"
    assert dict(rule.match) == {"Modality": "CT", "StudyDate": "20240101-", "BodyPartExamined": "HEAD\\NECK"}
    assert rule.destinations() == [("C-STORE", "AI_NODE"), ("STOW-RS", "https://dicomweb.example/dicom-web")]
    assert rule.source == "config" and rule.to_json()["read_only"] is True
    assert rule_from_mapping(rule.to_dict()) == rule  # what the API stores reads back the same
    assert rule.from_ae("CT01", "MINIPACS") and rule.from_ae("CT07 ", "MINIPACS")
    assert not rule.from_ae("CT011", "MINIPACS") and not rule.from_ae("MR01", "MINIPACS")
    assert not rule.from_ae("CT01", "OTHER")


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ('name = "a"\nwhen = "stable"\nsend_to = ["X"]', "[[rules]] number 1: rule 'a': when = \"stable\" needs"),
        ('name = "a"\nwhen = "instance"\nsend_to = ["X"]\nsend-to = ["Y"]', "unknown key 'send-to'"),
        ('name = "a"\nwhen = "instance"\nsend_to = "X"\nstable_seconds = 3', 'belong to when = "stable"'),
        ('name = "a"\nwhen = "instance"\nsend_to = ["X"]\nmatch = { StudyDate = "2024-01-01" }', "rule 'a': match"),
        ('name = "a"\nwhen = "stable"\nstable_seconds = 0\nsend_to = ["X"]', "more than 0"),
        ('name = "a"\nwhen = "stable"\nstable_seconds = 604801\nsend_to = ["X"]', "at most 604800"),
        ('name = "a"\nwhen = "stable"\nstable_seconds = 5\nlevel = "patient"\nsend_to = ["X"]', "level 'patient'"),
        ('name = "a"\nwhen = "complete"\nprefetch_from = "Q"\nprefetch_to = "V"\nsend_to = ["X"]', "prefetch_from"),
    ],
)
def test_bad_rules_stop_the_config_naming_the_rule(tmp_path: Path, table: str, words: str) -> None:
    config = tmp_path / "minipacs.toml"
    config.write_text(f"[[rules]]\n{table}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, env={})
    assert words in str(caught.value)


def test_limits_at_the_edge() -> None:
    (rule,) = rules_from_tables([{"name": "a", "when": "stable", "stable_seconds": 604800, "send_to": ["X"]}])
    assert rule.stable_seconds == 604800
    sixteen = [f"N{i}" for i in range(16)]
    assert len(rule_from_mapping({"name": "b", "when": "instance", "send_to": sixteen}).send_to) == 16
    with pytest.raises(ValueError, match="at most 16"):
        rule_from_mapping({"name": "b", "when": "instance", "send_to": [*sixteen, "N16"]})
    with pytest.raises(ValueError, match="already defined above"):
        rules_from_tables([{"name": "a", "when": "instance", "send_to": ["X"]}] * 2)


def test_a_scheduled_rule_matches_the_worklist_entry_with_its_step() -> None:
    rule = rule_from_mapping(
        {"name": "p", "when": "scheduled", "match": {"Modality": "C?"}, "prefetch_from": "Q", "prefetch_to": "V"}
    )
    ds, sps = Dataset(), Dataset()
    sps.Modality = "CT"
    ds.PatientID, ds.ScheduledProcedureStepSequence = "P", [sps]
    assert matches(rule.keys(), _flat(ds))
    sps.Modality = "MR"
    assert not matches(rule.keys(), _flat(ds))


def test_serve_refuses_a_rule_to_a_node_that_is_not_registered(tmp_path: Path) -> None:
    rules = rules_from_tables([{"name": "ct-to-ai", "when": "instance", "send_to": ["AI_NODE", "NOWHERE"]}])
    settings = Settings(
        data_dir=tmp_path / "data", fsync=False, rules=rules, nodes=(Node("AI_NODE", "127.0.0.1", 104),)
    )
    with pytest.raises(ConfigError) as caught:
        asyncio.run(build_app(settings))
    assert "rule 'ct-to-ai': send_to names 'NOWHERE', which is not a registered node" in str(caught.value)


def test_marks_claimed_once_moved_by_a_late_arrival_and_pruned(with_archive: Any) -> None:
    """routing_marks on SQLite and PostgreSQL: what "stable routes once" rests on."""

    async def body(archive: Archive) -> None:
        t0 = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
        await archive.write(lambda c: routing_repo.touch_marks(c, [("r", "1.2.3", "1.2.3")], t0))
        await archive.write(lambda c: routing_repo.touch_marks(c, [("r", "1.2.3", "1.2.3")], t0))  # one row
        assert await archive.read(lambda c: routing_repo.due_marks(c, "r", t0 - dt.timedelta(seconds=1))) == []
        (mark,) = await archive.read(lambda c: routing_repo.due_marks(c, "r", t0))
        now = t0 + dt.timedelta(seconds=5)
        claim = [await archive.write(lambda c: routing_repo.claim_mark(c, mark["id"], t0, now)) for _ in range(2)]
        assert claim == [True, False]  # a second node (or pass) does not route it again
        assert await archive.read(lambda c: routing_repo.due_marks(c, "r", now)) == []
        later = now + dt.timedelta(seconds=5)
        await archive.write(lambda c: routing_repo.touch_marks(c, [("r", "1.2.3", "1.2.3")], later))
        (again,) = await archive.read(lambda c: routing_repo.due_marks(c, "r", later))
        assert not await archive.write(lambda c: routing_repo.claim_mark(c, again["id"], t0, later))  # stale read
        assert await archive.write(lambda c: routing_repo.claim_mark(c, again["id"], later, later))
        assert await archive.write(lambda c: routing_repo.mark_once(c, "done", "9.9", "9.9", later))
        assert not await archive.write(lambda c: routing_repo.mark_once(c, "done", "9.9", "9.9", later))
        await archive.write(lambda c: routing_repo.touch_marks(c, [("r", "4.5", "4.5")], later))  # not routed
        assert await archive.write(lambda c: routing_repo.prune_marks(c, later)) == 0  # routed AT later: kept
        assert await archive.write(lambda c: routing_repo.prune_marks(c, later + dt.timedelta(seconds=1))) == 2
        left = await archive.read(lambda c: routing_repo.due_marks(c, "r", later))
        assert [m["key"] for m in left] == ["4.5"]

    with_archive(body, fsync=False)


def test_a_rule_selects_instances_by_dicom_matching_and_ae_titles(with_archive: Any, tmp_path: Path) -> None:
    """Router.matching: the query engine's matching (wildcards, ranges, lists) at any level, and the AE filters."""
    study, ct_series, mr_series = str(generate_uid()), str(generate_uid()), str(generate_uid())
    ct = [
        write_ct(tmp_path / f"ct{n}.dcm", study_uid=study, series_uid=ct_series, patient_name="Smith^Ann")
        for n in range(2)
    ]
    mr = write_ct(tmp_path / "mr.dcm", study_uid=study, series_uid=mr_series, Modality="MR", patient_name="Smith^Ann")

    def rule(match: dict[str, Any], calling: str = "") -> Rule:
        return rule_from_mapping(
            {"name": "r", "when": "instance", "match": match, "calling_aet": calling, "send_to": ["X"]}
        )

    async def body(archive: Archive) -> None:
        for path in ct:
            await archive.import_file(path, Origin("dicom", calling_aet="CT01", called_aet="MINIPACS"))
        await archive.import_file(mr, Origin("dicom", calling_aet="MR01", called_aet="MINIPACS"))
        router = Router(archive, cast(JobQueue, None), RuleBook(archive))

        async def count(r: Rule, **kw: Any) -> int:
            return len(await router.matching(r, study, **kw))

        assert await count(rule({})) == 3
        assert await count(rule({"Modality": "CT"})) == 2
        assert await count(rule({"Modality": ["MR", "PT"]})) == 1
        assert await count(rule({"PatientName": "smith*", "StudyDate": "20240101-20240201"})) == 3
        assert await count(rule({"StudyDate": "20250101-"})) == 0
        assert await count(rule({}, calling="CT*")) == 2
        assert await count(rule({"Modality": "CT"}, calling="MR01")) == 0
        assert await count(rule({}), series=mr_series) == 1

    with_archive(body, fsync=False)


def test_routing_settings_at_their_limits() -> None:
    for ok in ({"routing_poll_seconds": 0.05}, {"routing_poll_seconds": 3600}, {"routing_catch_up_seconds": 0}):
        Settings(**ok).validate()  # type: ignore[arg-type]
    Settings(routing_catch_up_seconds=2592000).validate()
    Settings(routing_coalesce_seconds=0).validate()
    Settings(routing_coalesce_seconds=60).validate()
    for bad, words in (
        ({"routing_poll_seconds": 0.04}, "routing_poll_seconds"),
        ({"routing_poll_seconds": 3601}, "routing_poll_seconds"),
        ({"routing_catch_up_seconds": 2592001}, "routing_catch_up_seconds"),
        ({"routing_catch_up_seconds": -1}, "routing_catch_up_seconds"),
        ({"routing_coalesce_seconds": -0.1}, "routing_coalesce_seconds"),
        ({"routing_coalesce_seconds": 61}, "routing_coalesce_seconds"),
    ):
        with pytest.raises(ConfigError, match=words):
            Settings(**bad).validate()  # type: ignore[arg-type]
    assert load_settings(env={"MINIPACS_ROUTING_POLL_SECONDS": "0.5"}).routing_poll_seconds == 0.5
    assert load_settings(env={"MINIPACS_ROUTING_COALESCE_SECONDS": "30"}).routing_coalesce_seconds == 30


def test_on_correction_defaults_to_resend_and_takes_ignore() -> None:
    """``on_correction`` (docs/ROUTING.md "Corrections"): "resend" unless the rule says "ignore"."""
    plain = rule_from_mapping({"name": "a", "when": "instance", "send_to": ["X"]})
    assert plain.on_correction is OnCorrection.RESEND and "on_correction" not in plain.to_dict()
    quiet = rule_from_mapping({"name": "b", "when": "instance", "send_to": ["X"], "on_correction": "ignore"})
    assert quiet.on_correction is OnCorrection.IGNORE and quiet.to_dict()["on_correction"] == "ignore"
    assert rule_from_mapping(quiet.to_dict()) == quiet  # what the API stores reads back the same
    for bad in ("Resend", "never", 1, ["ignore"], None):
        with pytest.raises(ValueError, match='on_correction .* must be "resend" or "ignore"'):
            rule_from_mapping({"name": "c", "when": "instance", "send_to": ["X"], "on_correction": bad})
    prefetch = {"name": "p", "when": "scheduled", "prefetch_from": "Q", "prefetch_to": "V"}
    with pytest.raises(ValueError, match="on_correction belongs to rules that send"):
        rule_from_mapping({**prefetch, "on_correction": "ignore"})
