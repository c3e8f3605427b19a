"""The access policy as a table: who may associate, and what each caller may ask for."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from minipacs.bootstrap import access_rules
from minipacs.config import Settings
from minipacs.core.access import (
    RULE_CALLED_AET,
    RULE_HOST,
    RULE_PERMISSIONS,
    RULE_UNREGISTERED,
    AccessPolicy,
    AccessRules,
)
from minipacs.core.archive import Archive
from minipacs.core.nodes import Node, NodeRegistry

DEFAULT = AccessRules(ae_title="MINIPACS")
REGISTERED_ONLY = AccessRules(ae_title="MINIPACS", allow_unregistered=frozenset())
HOST_CHECK = AccessRules(ae_title="MINIPACS", check_calling_host=True)
STRICT = AccessRules(
    ae_title="MINIPACS", allow_unregistered=frozenset(), check_calling_host=True, check_called_aet=True
)

NODES = (
    Node("VIEWER", "127.0.0.3", 104),
    Node("FINDER", "127.0.0.4", 104, permissions=frozenset({"echo", "find"})),
    Node("SCU_12", "127.0.0.2", 104, permissions=frozenset({"find", "move"})),
    Node("SCU_12", "127.0.0.6", 104, permissions=frozenset({"find", "get"})),
    Node("MUTE", "127.0.0.5", 104, permissions=frozenset()),
    Node("NAMED", "localhost", 104),
)


@dataclass(frozen=True)
class Assoc:
    rules: AccessRules
    calling: str
    peer: str
    rule: str | None  # None: accepted
    called: str = "MINIPACS"


ASSOCIATIONS = {
    "default, unknown caller": Assoc(DEFAULT, "ANYONE", "127.0.0.9", None),
    "default, registered caller from elsewhere": Assoc(DEFAULT, "VIEWER", "127.0.0.9", None),
    "registered only, unknown caller": Assoc(REGISTERED_ONLY, "ANYONE", "127.0.0.9", RULE_UNREGISTERED),
    "registered only, other case": Assoc(REGISTERED_ONLY, "viewer", "127.0.0.3", RULE_UNREGISTERED),
    "registered only, registered caller": Assoc(REGISTERED_ONLY, "VIEWER", "127.0.0.9", None),
    "registered only, trailing spaces": Assoc(REGISTERED_ONLY, "VIEWER  ", "127.0.0.3", None),
    "host check, right host": Assoc(HOST_CHECK, "VIEWER", "127.0.0.3", None),
    "host check, wrong host": Assoc(HOST_CHECK, "VIEWER", "127.0.0.2", RULE_HOST),
    "host check, IPv4-mapped address": Assoc(HOST_CHECK, "VIEWER", "::ffff:127.0.0.3", None),
    "host check, host name": Assoc(HOST_CHECK, "NAMED", "127.0.0.1", None),
    "host check, shared title, either host": Assoc(HOST_CHECK, "SCU_12", "127.0.0.6", None),
    "host check, shared title, third host": Assoc(HOST_CHECK, "SCU_12", "127.0.0.7", RULE_HOST),
    "host check, unknown caller is not a host question": Assoc(HOST_CHECK, "ANYONE", "127.0.0.9", None),
    "registered with no permissions": Assoc(DEFAULT, "MUTE", "127.0.0.5", RULE_PERMISSIONS),
    "strict, called AE wrong": Assoc(STRICT, "VIEWER", "127.0.0.3", RULE_CALLED_AET, called="OTHER"),
    "strict, all good": Assoc(STRICT, "VIEWER", "127.0.0.3", None),
}


def _policy(rules: AccessRules) -> AccessPolicy:
    policy = AccessPolicy(rules)
    asyncio.run(policy.load(NODES))
    return policy


@pytest.mark.parametrize("case", list(ASSOCIATIONS.values()), ids=list(ASSOCIATIONS))
def test_association(case: Assoc) -> None:
    refusal = _policy(case.rules).association_refusal(case.calling, case.called, case.peer)
    assert (refusal.rule if refusal else None) == case.rule
    if refusal is not None:
        # the sentence names the title (or the called title) and the address
        assert repr(case.called if refusal.called else case.calling.strip()) in refusal.reason
        assert refusal.called or case.peer in refusal.reason
        assert refusal.called == (case.rule == RULE_CALLED_AET)


@dataclass(frozen=True)
class Op:
    rules: AccessRules
    operation: str
    calling: str
    peer: str
    rule: str | None


OPERATIONS = {
    "default, unknown may echo": Op(DEFAULT, "echo", "ANYONE", "127.0.0.9", None),
    "default, unknown may store": Op(DEFAULT, "store", "ANYONE", "127.0.0.9", None),
    "default, unknown may find": Op(DEFAULT, "find", "ANYONE", "127.0.0.9", None),
    "default, unknown may not move": Op(DEFAULT, "move", "ANYONE", "127.0.0.9", RULE_UNREGISTERED),
    "default, unknown may not get": Op(DEFAULT, "get", "ANYONE", "127.0.0.9", RULE_UNREGISTERED),
    "registered, default permissions, move": Op(DEFAULT, "move", "VIEWER", "127.0.0.3", None),
    "registered, default permissions, get": Op(DEFAULT, "get", "VIEWER", "127.0.0.3", None),
    "registered, permissions say find only": Op(DEFAULT, "store", "FINDER", "127.0.0.4", RULE_PERMISSIONS),
    "registered, permissions allow find": Op(DEFAULT, "find", "FINDER", "127.0.0.4", None),
    "shared title, node at the address decides (move)": Op(DEFAULT, "move", "SCU_12", "127.0.0.2", None),
    "shared title, node at the address decides (no get)": Op(DEFAULT, "get", "SCU_12", "127.0.0.2", RULE_PERMISSIONS),
    "shared title, other node decides (get)": Op(DEFAULT, "get", "SCU_12", "127.0.0.6", None),
    "shared title, unknown address: what all allow": Op(DEFAULT, "find", "SCU_12", "127.0.0.9", None),
    "shared title, unknown address: not move": Op(DEFAULT, "move", "SCU_12", "127.0.0.9", RULE_PERMISSIONS),
    "host check, wrong host": Op(HOST_CHECK, "echo", "VIEWER", "127.0.0.2", RULE_HOST),
    "registered only, unknown echo": Op(REGISTERED_ONLY, "echo", "ANYONE", "127.0.0.9", RULE_UNREGISTERED),
}


@pytest.mark.parametrize("case", list(OPERATIONS.values()), ids=list(OPERATIONS))
def test_operation(case: Op) -> None:
    refusal = _policy(case.rules).operation_refusal(case.operation, case.calling, case.peer)
    assert (refusal.rule if refusal else None) == case.rule
    if refusal is not None:
        assert repr(case.calling) in refusal.reason and case.peer in refusal.reason
        assert f"C-{case.operation.upper()}" in refusal.reason
        assert "minipacs nodes add" in refusal.reason or case.rule == RULE_HOST


def test_unknown_operation_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown operation 'delete'"):
        _policy(DEFAULT).operation_refusal("delete", "VIEWER", "127.0.0.3")


def test_async_contract_returns_the_sentence_with_the_rule() -> None:
    policy = _policy(REGISTERED_ONLY)

    async def main() -> tuple[Any, ...]:
        return (
            await policy.check_association("VIEWER", "MINIPACS", "127.0.0.3"),
            await policy.check_association("ANYONE", "MINIPACS", "127.0.0.9"),
            await policy.check_operation("store", "VIEWER", "127.0.0.3"),
            await policy.check_operation("move", "FINDER", "127.0.0.4"),
        )

    ok_assoc, bad_assoc, ok_op, bad_op = asyncio.run(main())
    assert ok_assoc is None and ok_op is None
    assert bad_assoc.startswith("calling AE title 'ANYONE' from 127.0.0.9 is not a registered node")
    assert bad_assoc.endswith("(rule: allow_unregistered)")
    assert "'FINDER' (from 127.0.0.4) is registered with permission to echo, find, not C-MOVE" in bad_op
    assert "--permissions echo,find,move" in bad_op and bad_op.endswith("(rule: node permissions)")


def test_defaults_come_from_settings() -> None:
    rules = access_rules(Settings())
    assert rules.allow_unregistered == frozenset({"echo", "store", "find"})
    assert not rules.check_calling_host and not rules.check_called_aet and rules.ae_title == "MINIPACS"
    assert AccessPolicy(access_rules(Settings())).association_refusal("ANYONE", "X", "10.0.0.1") is None


def test_rules_follow_each_setting() -> None:
    rules = access_rules(
        Settings(ae_title="OURPACS", allow_unregistered=("echo",), check_calling_host=True, check_called_aet=True)
    )
    assert rules == AccessRules("OURPACS", frozenset({"echo"}), check_calling_host=True, check_called_aet=True)


def test_policy_follows_the_registry_without_querying_per_check(with_archive: Any) -> None:
    async def body(archive: Archive) -> list[str | None]:
        registry = NodeRegistry(archive)
        policy = AccessPolicy(REGISTERED_ONLY, resolver=registry.resolver)
        registry.subscribe(policy.load)
        await registry.refresh()
        before = policy.association_refusal("LATE", "MINIPACS", "127.0.0.8")
        await registry.add(Node("LATE", "127.0.0.8", 104))
        during = policy.association_refusal("LATE", "MINIPACS", "127.0.0.8")
        await registry.remove("LATE")
        after = policy.association_refusal("LATE", "MINIPACS", "127.0.0.8")
        return [r.rule if r else None for r in (before, during, after)]

    assert with_archive(body) == [RULE_UNREGISTERED, None, RULE_UNREGISTERED]


def test_operation_answers_are_kept_until_the_registry_or_the_rules_change(with_archive: Any) -> None:
    """operation_refusal keeps its answers (it is asked for every request), but never past a change."""

    async def body(archive: Archive) -> list[str | None]:
        registry = NodeRegistry(archive)
        policy = AccessPolicy(REGISTERED_ONLY, resolver=registry.resolver)
        registry.subscribe(policy.load)
        await registry.refresh()
        seen = [policy.operation_refusal("store", "LATE", "127.0.0.8")]
        await registry.add(Node("LATE", "127.0.0.8", 104, permissions=frozenset({"store"})))
        seen.append(policy.operation_refusal("store", "LATE", "127.0.0.8"))
        seen.append(policy.operation_refusal("store", "LATE", "127.0.0.8"))  # kept
        await registry.add(Node("LATE", "127.0.0.8", 104, permissions=frozenset({"echo"})))
        seen.append(policy.operation_refusal("store", "LATE", "127.0.0.8"))
        policy.rules = HOST_CHECK  # new rules, same registry
        seen.append(policy.operation_refusal("store", "LATE", "127.0.0.9"))
        await registry.remove("LATE")
        seen.append(policy.operation_refusal("store", "LATE", "127.0.0.8"))
        return [r.rule if r else None for r in seen]

    assert with_archive(body) == [RULE_UNREGISTERED, None, None, RULE_PERMISSIONS, RULE_HOST, None]


def test_kept_operation_answers_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import minipacs.core.access as access

    monkeypatch.setattr(access, "MAX_DECIDED", 8)
    policy = _policy(DEFAULT)
    for i in range(20):
        assert policy.operation_refusal("move", f"CALLER{i}", "127.0.0.9") is not None
        assert len(policy._decided) <= 8
    calls: list[str] = []
    decide = policy._operation_refusal

    def counted(operation: str, calling_ae: str, peer_host: str) -> Any:
        calls.append(calling_ae)
        return decide(operation, calling_ae, peer_host)

    monkeypatch.setattr(policy, "_operation_refusal", counted)
    for _ in range(3):
        assert policy.operation_refusal("move", "VIEWER", "127.0.0.3") is None
    assert calls == ["VIEWER"], "decided again although nothing changed"
