"""The AE registry on SQLite and PostgreSQL: CRUD, C-MOVE destination resolution, checks, config seeding."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from minipacs.bootstrap import build_app, open_archive
from minipacs.config import ConfigError, Settings, load_settings
from minipacs.core.archive import Archive
from minipacs.core.errors import AmbiguousDestination, UnknownDestination
from minipacs.core.nodes import ALL_OPERATIONS, InvalidNode, Node, NodeRegistry, parse_permissions, registry_warnings

# ----------------------------------------------------------------------- CRUD


def test_add_list_find_remove(with_archive: Any) -> None:
    async def body(archive: Archive) -> None:
        reg = NodeRegistry(archive)
        assert await reg.list() == []
        a = await reg.add(Node("SCU_12", "127.0.0.2", 104, "viewer 2F", frozenset({"find", "move"})))
        b = await reg.add(Node("SCU_12", "127.0.0.3", 105, tls=True))
        c = await reg.add(Node(" CT1 ", "ct1.local", 4242))
        assert a.id is not None and b.id is not None and c.id is not None
        assert (a.ae_title, a.host, a.port, a.description, a.permissions, a.tls) == (
            "SCU_12",
            "127.0.0.2",
            104,
            "viewer 2F",
            frozenset({"find", "move"}),
            False,
        )
        assert b.permissions == ALL_OPERATIONS and b.tls
        assert c.ae_title == "CT1"  # PS3.5 AE: surrounding spaces are not significant
        assert [n.address for n in await reg.list()] == ["ct1.local:4242", "127.0.0.2:104", "127.0.0.3:105"]
        assert [n.host for n in await reg.find("SCU_12  ")] == ["127.0.0.2", "127.0.0.3"]
        assert await reg.find("scu_12") == []  # titles are compared exactly
        assert await reg.remove("SCU_12", host="127.0.0.9") == 0
        assert await reg.remove("SCU_12", host="127.0.0.3") == 1
        assert [n.address for n in await reg.find("SCU_12")] == ["127.0.0.2:104"]
        assert await reg.remove("CT1 ") == 1
        assert await reg.remove("SCU_12") == 1
        assert await reg.list() == []

    with_archive(body)


def test_add_same_title_and_host_updates(with_archive: Any) -> None:
    async def body(archive: Archive) -> None:
        reg = NodeRegistry(archive)
        first = await reg.add(Node("SCU_12", "127.0.0.2", 104))
        again = await reg.add(Node("SCU_12", "127.0.0.2", 104))
        moved = await reg.add(Node("SCU_12", "127.0.0.2", 11112, "now on 11112", frozenset({"echo"})))
        assert first.id == again.id == moved.id
        assert (await reg.list()) == [moved]
        assert (moved.port, moved.description, moved.permissions) == (11112, "now on 11112", frozenset({"echo"}))

    with_archive(body)


@pytest.mark.parametrize(
    ("node", "words"),
    [
        (Node("", "127.0.0.1", 104), "1 to 16"),
        (Node("   ", "127.0.0.1", 104), "1 to 16"),
        (Node("A_TITLE_THAT_IS_TOO_LONG", "127.0.0.1", 104), "1 to 16"),
        (Node("BACK\\SLASH", "127.0.0.1", 104), "printable ASCII"),
        (Node("TAB\tBED", "127.0.0.1", 104), "printable ASCII"),
        (Node("OK", "", 104), "host"),
        (Node("OK", "two words", 104), "host"),
        (Node("OK", "127.0.0.1", 0), "port"),
        (Node("OK", "127.0.0.1", 65536), "port"),
        (Node("OK", "127.0.0.1", 104, permissions=frozenset({"fly"})), "permission"),
    ],
)
def test_invalid_nodes_are_refused_with_the_reason(tmp_path: Path, node: Node, words: str) -> None:
    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data"))
        try:
            with pytest.raises(InvalidNode, match=words):
                await NodeRegistry(archive).add(node)
        finally:
            await archive.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("all", ALL_OPERATIONS),
        ("none", frozenset()),
        ("", frozenset()),
        ("echo,store", frozenset({"echo", "store"})),
        (" Find , MOVE ", frozenset({"find", "move"})),
    ],
)
def test_parse_permissions(text: str, expected: frozenset[str]) -> None:
    assert parse_permissions(text) == expected


# ------------------------------------------------- C-MOVE destination resolution

SCU2 = Node("SCU_12", "127.0.0.2", 104)
SCU3 = Node("SCU_12", "127.0.0.3", 104)
LOWER = Node("scu_12", "127.0.0.4", 104)
VIA_NAME = Node("WS", "localhost", 104)
VIA_IP = Node("WS", "127.0.0.1", 105)
OTHER_WS = Node("WS", "127.0.0.5", 104)


@dataclass(frozen=True)
class Case:
    nodes: tuple[Node, ...]
    destination: str
    requester: str
    expected: str  # "host:port" of the chosen node, or the error class name
    words: tuple[str, ...] = ()  # must appear in the error message


RESOLUTION = {
    "unique title, requester elsewhere": Case((SCU2,), "SCU_12", "127.0.0.9", "127.0.0.2:104"),
    "duplicate, requester is the first": Case((SCU2, SCU3), "SCU_12", "127.0.0.2", "127.0.0.2:104"),
    "duplicate, requester is the second": Case((SCU2, SCU3), "SCU_12", "127.0.0.3", "127.0.0.3:104"),
    "duplicate, IPv4-mapped requester": Case((SCU2, SCU3), "SCU_12", "::ffff:127.0.0.3", "127.0.0.3:104"),
    "duplicate, no requester match": Case(
        (SCU2, SCU3),
        "SCU_12",
        "127.0.0.4",
        "AmbiguousDestination",
        ("'SCU_12'", "127.0.0.2:104", "127.0.0.3:104", "127.0.0.4", "none of them"),
    ),
    "duplicate, host name resolves to requester": Case((VIA_NAME, OTHER_WS), "WS", "127.0.0.1", "localhost:104"),
    "duplicate, two nodes at the requester's address": Case(
        (VIA_NAME, VIA_IP, OTHER_WS),
        "WS",
        "127.0.0.1",
        "AmbiguousDestination",
        ("localhost:104", "127.0.0.1:105", "127.0.0.5:104", "rather than guessing"),
    ),
    "unknown title": Case(
        (SCU2,),
        "NOPE",
        "127.0.0.2",
        "UnknownDestination",
        ("C-MOVE destination 'NOPE' is not a registered node; add it with: minipacs nodes add NOPE HOST PORT",),
    ),
    "trailing spaces in the request": Case((SCU2,), "SCU_12  ", "127.0.0.9", "127.0.0.2:104"),
    "other case than registered": Case(
        (SCU2,),
        "scu_12",
        "127.0.0.2",
        "UnknownDestination",
        ("'scu_12' is not a registered node", "differing only in case: 'SCU_12' at 127.0.0.2:104"),
    ),
    "case variants are different titles": Case((SCU2, LOWER), "scu_12", "127.0.0.2", "127.0.0.4:104"),
    "upper case variant still unique": Case((SCU2, LOWER), "SCU_12", "127.0.0.4", "127.0.0.2:104"),
}


@pytest.mark.parametrize("case", list(RESOLUTION.values()), ids=list(RESOLUTION))
def test_resolve_move_destination(with_archive: Any, case: Case, caplog: pytest.LogCaptureFixture) -> None:
    async def body(archive: Archive) -> str:
        reg = NodeRegistry(archive)
        for node in case.nodes:
            await reg.add(node, warn=False)
        try:
            return (await reg.resolve_move_destination(case.destination, case.requester)).address
        except (AmbiguousDestination, UnknownDestination) as exc:
            for words in case.words:
                assert words in str(exc)
            return type(exc).__name__

    caplog.set_level(logging.WARNING, logger="minipacs.core.nodes")
    assert with_archive(body) == case.expected
    title = case.destination.strip()
    if sum(n.ae_title == title for n in case.nodes) > 1:
        # a duplicated title is never resolved silently: the warning names every candidate
        warned = " ".join(r.getMessage() for r in caplog.records)
        assert all(n.address in warned for n in case.nodes if n.ae_title == title), warned


def test_resolution_reads_the_index_not_a_stale_copy(with_archive: Any) -> None:
    async def body(archive: Archive) -> list[str]:
        first, second = NodeRegistry(archive), NodeRegistry(archive)
        await first.add(SCU2)
        assert (await second.resolve_move_destination("SCU_12", "127.0.0.9")).host == "127.0.0.2"
        await first.add(SCU3, warn=False)
        seen = []
        try:
            await second.resolve_move_destination("SCU_12", "127.0.0.9")
        except AmbiguousDestination:
            seen.append("ambiguous")
        seen.append((await second.resolve_move_destination("SCU_12", "127.0.0.3")).host)
        return seen

    assert with_archive(body) == ["ambiguous", "127.0.0.3"]


# ---------------------------------------------------------------------- check


def test_check_names_shared_and_near_identical_titles(with_archive: Any) -> None:
    async def body(archive: Archive) -> list[str]:
        reg = NodeRegistry(archive)
        assert await reg.check() == []
        for node in (SCU2, SCU3, LOWER, Node("CT1", "10.0.0.7", 104)):
            await reg.add(node, warn=False)
        return await reg.check()

    warnings = with_archive(body)
    assert len(warnings) == 2
    shared, case = warnings
    assert "'SCU_12' is used by 2 nodes (127.0.0.2:104, 127.0.0.3:104)" in shared
    assert "requester's address" in shared and "refused" in shared
    assert "'SCU_12' at 127.0.0.2:104" in case and "'scu_12' at 127.0.0.4:104" in case
    assert "differ only in case" in case and "CT1" not in " ".join(warnings)


def test_check_flags_titles_differing_only_in_surrounding_spaces() -> None:
    # Not possible through the registry (it strips), but rows from elsewhere may have them.
    warnings = registry_warnings([Node("PACS", "10.0.0.1", 104), Node("PACS ", "10.0.0.1", 105)])
    assert len(warnings) == 1
    assert "differ only in case or leading/trailing spaces" in warnings[0]


def test_registry_notifies_listeners_and_refresh_sees_other_writers(with_archive: Any) -> None:
    async def body(archive: Archive) -> list[int]:
        mine, other = NodeRegistry(archive), NodeRegistry(archive)
        seen: list[int] = []

        async def listener(nodes: tuple[Node, ...]) -> None:
            seen.append(len(nodes))

        mine.subscribe(listener)
        await mine.refresh()  # first read: 0 nodes
        await mine.add(SCU2)  # own write: 1
        await other.add(SCU3, warn=False)  # another process, as far as `mine` knows
        await mine.refresh()  # sees 2
        await mine.refresh()  # nothing new: no notification
        await other.remove("SCU_12")
        await mine.refresh()  # sees 0
        return seen

    assert with_archive(body) == [0, 1, 2, 0]


# ------------------------------------------------------------ config seeding

CONFIG = """
ae_title = "MYPACS"
allow_unregistered = ["echo"]
check_calling_host = true

[[nodes]]
ae_title = "SCU_12"
host = "127.0.0.2"
port = 104
description = "viewer, 2nd floor"
permissions = ["find", "move"]

[[nodes]]
ae_title = "SCU_12"
host = "127.0.0.3"
port = 104

[[nodes]]
ae_title = "CT1"
host = "127.0.0.7"
port = 4242
permissions = "store,echo"
tls = true
"""


def test_config_nodes_are_typed(tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text(CONFIG)
    s = load_settings(cfg, env={})
    assert s.allow_unregistered == ("echo",) and s.check_calling_host
    assert [(n.ae_title, n.host, n.port) for n in s.nodes] == [
        ("SCU_12", "127.0.0.2", 104),
        ("SCU_12", "127.0.0.3", 104),
        ("CT1", "127.0.0.7", 4242),
    ]
    assert s.nodes[0].permissions == frozenset({"find", "move"}) and s.nodes[0].description == "viewer, 2nd floor"
    assert s.nodes[1].permissions == ALL_OPERATIONS
    assert s.nodes[2].permissions == frozenset({"store", "echo"}) and s.nodes[2].tls
    # under [minipacs] too, and the environment can empty allow_unregistered
    cfg.write_text('[minipacs]\nport = 104\n[[minipacs.nodes]]\nae_title = "A"\nhost = "h"\nport = 1\n')
    s = load_settings(cfg, env={"MINIPACS_ALLOW_UNREGISTERED": ""})
    assert [n.ae_title for n in s.nodes] == ["A"] and s.allow_unregistered == ()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[[nodes]]\nae_title = "A"\nhost = "h"\n', "number 1 ('A'): missing port"),
        (
            '[[nodes]]\nae_title = "A"\nhost = "h"\nport = 1\n[[nodes]]\nae_title = "B"\nhost = "h"\nport = 0\n',
            "number 2 ('B'): port 0",
        ),
        ('[[nodes]]\nae_title = "A"\nhost = "h"\nport = 1\npermissions = ["fly"]\n', "unknown permission 'fly'"),
        ('[[nodes]]\nae_title = "A"\nhost = "h"\nport = 1\ncolour = "red"\n', "unknown key 'colour'"),
        ('nodes = "SCU_12"\n', "must be [[nodes]] tables"),
        ('allow_unregistered = ["echo", "delete"]\n', "allow_unregistered: unknown operation 'delete'"),
    ],
)
def test_bad_config_nodes_are_refused(tmp_path: Path, text: str, words: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_settings(cfg, env={})


def test_start_up_seeds_the_registry_and_warns_about_duplicates(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text(CONFIG)
    settings = load_settings(cfg, env={}, overrides={"data_dir": tmp_path / "data", "port": 0})

    async def main() -> tuple[list[Node], list[Node]]:
        app = await build_app(settings)
        try:
            await app.nodes.add(Node("ADDED", "127.0.0.8", 104))  # as `minipacs nodes add` would
            first = await app.nodes.list()
        finally:
            await app.close()
        # Second start with one node changed in the config: upserted, the CLI-added one stays.
        changed = dataclasses.replace(settings.nodes[2], port=4343)
        app = await build_app(dataclasses.replace(settings, nodes=(settings.nodes[0], changed)))
        try:
            return first, await app.nodes.list()
        finally:
            await app.close()

    caplog.set_level(logging.INFO, logger="minipacs")
    first, second = asyncio.run(main())
    assert [n.address for n in first] == ["127.0.0.8:104", "127.0.0.7:4242", "127.0.0.2:104", "127.0.0.3:104"]
    assert [n.address for n in second] == ["127.0.0.8:104", "127.0.0.7:4343", "127.0.0.2:104", "127.0.0.3:104"]
    warned = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "AE registry" in r.getMessage()
    ]
    assert warned and "'SCU_12' is used by 2 nodes (127.0.0.2:104, 127.0.0.3:104)" in warned[0]
    assert any(
        "unregistered callers may echo; registered callers must come from their registered host" in r.getMessage()
        for r in caplog.records
    )
