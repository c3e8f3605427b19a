"""``labels`` in the filters of the three kinds of rules (routing ``[[rules]]``, ``[[compression]]``,
``[[retention]]``): the study must carry every label, through the query engine's labels filter (the
one ``labels=`` uses). On SQLite and PostgreSQL (the ``with_archive`` fixture)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from minipacs.config import ConfigError, load_settings
from minipacs.core import labels, retention
from minipacs.core.archive import Archive
from minipacs.core.compression import CompressionSettings, Compressor, policy_from_mapping
from minipacs.core.compression_jobs import COMPRESS, job_params, register_compression_jobs
from minipacs.core.errors import InvalidQuery
from minipacs.core.jobs import JobQueue, JobSettings, JobState
from minipacs.core.model import Origin
from minipacs.core.query import prepare_query, query
from minipacs.core.retention import InvalidRetentionRule
from minipacs.core.routing import Router
from minipacs.core.rules import InvalidRule, RuleBook, rule_from_mapping
from minipacs.dicom.levels import PATIENT_ROOT, STUDY_ROOT, Level
from minipacs.index import routing_repo
from tests.core.test_compression import _store, _stored_row, image
from tests.core.test_retention import arrived, studies
from tests.core.test_retention import store as store_study
from tests.dicomgen import write_ct
from tests.web.test_rest_rules import ADMIN
from tests.web.test_rest_rules import run as run_api

FAST = JobSettings(poll_seconds=0.05, progress_seconds=0.05, stale_seconds=5)


class Recorder:
    """Stands for the job queue: keeps the params of each job the router submits."""

    def __init__(self) -> None:
        self.params: list[dict[str, Any]] = []

    async def submit(self, kind: str, description: str, params: dict[str, Any], **_: Any) -> Any:
        self.params.append(params)
        return SimpleNamespace(id=len(self.params), description=description)


# ------------------------------------------------------------------ routing


def test_a_stable_rule_with_labels_routes_only_the_labelled_study(with_archive: Any, tmp_path: Path) -> None:
    labelled, plain = str(generate_uid()), str(generate_uid())
    rule = rule_from_mapping(
        {
            "name": "teaching-to-ai",
            "when": "stable",
            "stable_seconds": 30,
            "match": {"Modality": "CT"},
            "labels": ["teaching", "ai"],
            "send_to": ["AI_NODE"],
        }
    )
    instance_rule = rule_from_mapping({"name": "i", "when": "instance", "labels": ["ai"], "send_to": ["AI_NODE"]})

    async def body(archive: Archive) -> None:
        for study in (labelled, plain):
            for n in range(2):
                await archive.import_file(write_ct(tmp_path / f"{study}.{n}.dcm", study_uid=study), Origin("test"))
        for label in ("teaching", "ai"):
            await labels.add_label(archive, labelled, label)
        await labels.add_label(archive, plain, "teaching")  # one of the two: not enough
        jobs = Recorder()
        router = Router(archive, cast(JobQueue, jobs), RuleBook(archive, [rule]))
        quiet = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
        marks = [(rule.name, labelled, labelled), (rule.name, plain, plain)]
        await archive.write(lambda conn: routing_repo.touch_marks(conn, marks, quiet))
        await router.run_once()
        assert [(p["study"], p["instances"]) for p in jobs.params] == [(labelled, 2)]
        # when = "instance": the label must be on the study when the instance arrives
        assert len(await router.matching(instance_rule, labelled)) == 2
        assert await router.matching(instance_rule, plain) == []

    with_archive(body, fsync=False)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"labels": ["no space"]}, "rule 'a': labels: label 'no space' is not valid"),
        ({"labels": [""]}, "rule 'a': labels: label '' is not valid"),
        ({"labels": [1]}, "rule 'a': labels must be a list of labels"),
        ({"labels": [f"l{i}" for i in range(17)]}, "rule 'a': labels lists 17 labels; at most 16"),
        (
            {"when": "scheduled", "prefetch_from": "Q", "prefetch_to": "V", "labels": ["x"], "send_to": None},
            'labels cannot filter a when = "scheduled" rule',
        ),
    ],
)
def test_invalid_routing_labels_are_refused_naming_the_rule(extra: dict[str, Any], words: str) -> None:
    table = {k: v for k, v in {"name": "a", "when": "instance", "send_to": ["X"], **extra}.items() if v is not None}
    with pytest.raises(InvalidRule) as caught:
        rule_from_mapping(table)
    assert words in str(caught.value)


def test_routing_labels_at_the_limit_and_from_the_config_file(tmp_path: Path) -> None:
    sixteen = [f"l{i}" for i in range(16)]
    rule = rule_from_mapping({"name": "a", "when": "complete", "labels": sixteen, "send_to": ["X"]})
    assert rule.labels == tuple(sixteen) and rule.to_dict()["labels"] == sixteen
    assert rule_from_mapping(rule.to_dict()) == rule
    config = tmp_path / "m.toml"
    config.write_text('[[rules]]\nname = "a"\nwhen = "instance"\nsend_to = ["X"]\nlabels = ["ok", "not ok"]\n')
    with pytest.raises(ConfigError, match="rule 'a': labels: label 'not ok' is not valid"):
        load_settings(config, env={})


def test_labels_round_trip_through_the_rules_api(tmp_path: Path) -> None:
    rule = {"name": "lab", "when": "stable", "stable_seconds": 5, "labels": ["teaching"], "send_to": ["AI_NODE"]}

    async def body(client: httpx.AsyncClient, archive: Any) -> None:
        r = await client.post("/api/rules", json=rule, headers=ADMIN)
        assert r.status_code == 201, r.text
        assert r.json()["labels"] == ["teaching"]
        assert (await client.get("/api/rules/lab", headers=ADMIN)).json()["labels"] == ["teaching"]
        r = await client.put("/api/rules/lab", json={**rule, "labels": ["a", "b"]}, headers=ADMIN)
        assert r.status_code == 200 and r.json()["labels"] == ["a", "b"]
        r = await client.put("/api/rules/lab", json={**rule, "labels": ["a b"]}, headers=ADMIN)
        assert r.status_code == 400 and "rule 'lab': labels: label 'a b' is not valid" in r.json()["error"]["message"]
        assert (await client.get("/api/rules/lab", headers=ADMIN)).json()["labels"] == ["a", "b"]

    run_api(tmp_path, body)


# ------------------------------------------------------------------ compression


def test_a_compression_policy_with_labels_compresses_only_labelled_studies(with_archive: Any, tmp_path: Path) -> None:
    labelled, plain = image("8bit", generate_uid()), image("8bit", generate_uid())
    policy = policy_from_mapping({"name": "teaching", "syntax": "rle", "labels": ["teaching"]})
    assert policy.to_json()["labels"] == ["teaching"]

    async def body(archive: Archive) -> None:
        await _store(archive, tmp_path, labelled[0], "labelled")
        await _store(archive, tmp_path, plain[0], "plain")
        await labels.add_label(archive, str(labelled[0].StudyInstanceUID), "teaching")
        queue = JobQueue(archive, FAST)
        register_compression_jobs(queue, Compressor(archive, CompressionSettings(fsync=False)))
        await queue.start()
        try:
            job = await queue.submit(COMPRESS, "teaching", job_params(policy.syntax, policy=policy))
            done = await queue.wait(job.id, timeout=120)
        finally:
            await queue.close()
        assert done.state is JobState.DONE, done.message
        assert done.params["labels"] == ["teaching"] and done.details["compressed"] == 1
        assert (await _stored_row(archive, str(labelled[0].SOPInstanceUID)))["compression"]
        assert not (await _stored_row(archive, str(plain[0].SOPInstanceUID)))["compression"]

    with_archive(body, fsync=False)


def test_invalid_compression_labels_stop_the_config_naming_the_policy(tmp_path: Path) -> None:
    config = tmp_path / "m.toml"
    config.write_text('[[compression]]\nname = "ct"\nsyntax = "rle"\nlabels = ["teaching", "x/y"]\n')
    with pytest.raises(ConfigError, match=r"\[\[compression\]\] number 1 \('ct'\): labels: label 'x/y' is not valid"):
        load_settings(config, env={})


# ------------------------------------------------------------------ retention


def test_a_retention_rule_with_labels_deletes_only_labelled_studies(with_archive: Any, tmp_path: Path) -> None:
    rule = retention.rule_from_mapping({"name": "expired", "older_than_days": 30, "labels": ["expire"]})
    assert rule.to_json()["labels"] == ["expire"]

    async def body(archive: Archive) -> None:
        old_labelled = await store_study(archive, tmp_path)
        old_plain = await store_study(archive, tmp_path)
        fresh_labelled = await store_study(archive, tmp_path)
        for study in (old_labelled, old_plain):
            await arrived(archive, study, 31)
        for study in (old_labelled, fresh_labelled):
            await labels.add_label(archive, study, "expire")
        planned = await retention.plan(archive, [rule])
        assert [c.study for c in planned.candidates] == [old_labelled]
        result = await retention.run(archive, [rule])
        assert [c.study for c in result.deleted] == [old_labelled]
        assert await studies(archive) == {old_plain, fresh_labelled}

    with_archive(body, fsync=False)


@pytest.mark.parametrize(
    ("labels_value", "words"),
    [
        (["ok", "-bad!"], "rule 'x': labels: label '-bad!' is not valid"),
        ("", "rule 'x': labels: label '' is not valid"),
        ({"a": 1}, "rule 'x': labels must be a list"),
        (["keep"], "labels names 'keep', its protect_label"),
    ],
)
def test_invalid_retention_labels_are_refused_naming_the_rule(labels_value: Any, words: str) -> None:
    with pytest.raises(InvalidRetentionRule) as caught:
        retention.rule_from_mapping({"name": "x", "older_than_days": 1, "labels": labels_value})
    assert words in str(caught.value)


def test_invalid_retention_labels_stop_the_config(tmp_path: Path) -> None:
    config = tmp_path / "m.toml"
    config.write_text('[[retention]]\nname = "r"\nolder_than_days = 1\nlabels = ["a b"]\n')
    with pytest.raises(ConfigError, match=r"\[\[retention\]\] number 1: rule 'r': labels: label 'a b'"):
        load_settings(config, env={})


# ------------------------------------------------------------------ the query engine


def test_the_query_engine_takes_labels_below_the_study_level_not_above(with_archive: Any, tmp_path: Path) -> None:
    labelled, plain = (f"1.2.826.0.1.3680043.10.79.{dt.datetime.now().microsecond}.{n}" for n in (1, 2))
    with pytest.raises(InvalidQuery, match="labels are put on studies"):
        prepare_query(Dataset(), PATIENT_ROOT, level=Level.PATIENT, relational=True, labels=["a"])

    async def body(archive: Archive) -> None:
        for study in (labelled, plain):
            path = write_ct(tmp_path / f"{study}.dcm", study_uid=study, series_uid=f"{study}.1", sop_uid=f"{study}.1.1")
            await archive.import_file(path, Origin("test"))
        await labels.add_label(archive, labelled, "a")
        for level, key, uid in ((Level.SERIES, "SeriesInstanceUID", "1"), (Level.IMAGE, "SOPInstanceUID", "1.1")):
            ds = Dataset()  # no study-level key: the labels filter joins the studies table itself
            setattr(ds, key, "")
            found = [m async for m in query(archive, level, ds, model=STUDY_ROOT, relational=True, labels=["a"])]
            assert [str(m[key].value) for m in found] == [f"{labelled}.{uid}"], level

    with_archive(body, fsync=False)
