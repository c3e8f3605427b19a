"""Auto-routing rules: what they say, how they are checked, where they live (docs/ROUTING.md).

A rule is a ``[[rules]]`` table of the config file (read-only: it comes back with the config at each
start) or a row of the index made through ``/api/rules`` (shared by every node). Its keys are the
ones scripts rely on (issue 13):

- **when**: ``instance`` (each instance as it arrives), ``stable`` (a study, or a series with
  ``level = "series"``, had no arrival for ``stable_seconds``), ``complete`` (the study is complete by
  MPPS and arrivals), ``scheduled`` (a worklist entry appeared: prefetch).
- **which**: ``match`` (DICOM keyword -> value, PS3.4 C.2.2.2 matching of indexed attributes:
  single value, wildcards ``*`` ``?``, date/time ranges, lists), ``calling_aet`` and ``called_aet``
  (with wildcards) of the association that brought each instance, ``labels`` (the study must carry
  every one, core/labels.py, as the ``labels=`` query parameter; checked when the rule runs, so for
  ``instance`` when each instance arrives; not for ``scheduled``: a worklist entry has no labels).
- **do**: ``send_to`` (C-STORE to registered nodes, by AE title), ``stow_to`` (STOW-RS to DICOMweb
  base URLs), optionally ``anonymize`` (de-identified copies are sent instead, core/anonymize.py),
  or for ``scheduled``: ``prefetch_from`` (a registered node to C-FIND and C-MOVE the
  patient's prior studies from) and ``prefetch_to`` (the C-MOVE destination AE title).
- **after a correction**: ``on_correction`` = ``"resend"`` (default) or ``"ignore"``: whether the
  instances this rule delivered are sent again, corrected, to the same destinations when a correction
  (core/corrections.py) rewrites them (core/reforward.py, docs/ROUTING.md).

Nothing here runs a rule: core/routing.py does.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import pydicom.config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from minipacs.core.deid import InvalidDeidOptions, check_options
from minipacs.core.errors import ArchiveError, InvalidKeyValue, NotFound
from minipacs.core.identifier import Key, read_keys
from minipacs.core.labels import InvalidLabel, rule_labels
from minipacs.core.nodes import Node, normalise_title
from minipacs.core.query_model import INDEXED_KEYS
from minipacs.index import routing_repo
from minipacs.index.matching import wildcard_match

if TYPE_CHECKING:
    from minipacs.core.nodes import IndexAccess


class Trigger(enum.StrEnum):
    """``when``: the event that runs a rule."""

    INSTANCE = "instance"
    STABLE = "stable"
    COMPLETE = "complete"
    SCHEDULED = "scheduled"


#: What each trigger means, in words (docs, the UI, error messages).
TRIGGERS: Final[Mapping[Trigger, str]] = {
    Trigger.INSTANCE: "each instance, right after it is stored",
    Trigger.STABLE: "a study (or series) with no new instance for stable_seconds",
    Trigger.COMPLETE: "a study complete by MPPS and arrivals",
    Trigger.SCHEDULED: "a worklist entry created (prefetch of the patient's prior studies)",
}


class OnCorrection(enum.StrEnum):
    """``on_correction``: what a correction of instances this rule already delivered does (docs/ROUTING.md)."""

    RESEND = "resend"  # the corrected instances go again to the destinations that received them
    IGNORE = "ignore"  # the destinations keep what they received


#: ``level`` of a stable rule: what must be quiet, and what is routed.
LEVELS: Final = ("study", "series")
#: Every key a rule may have; anything else is an error (a typo must not silently route nothing).
RULE_KEYS: Final = (
    "name",
    "when",
    "stable_seconds",
    "level",
    "match",
    "labels",
    "calling_aet",
    "called_aet",
    "send_to",
    "stow_to",
    "prefetch_from",
    "prefetch_to",
    "anonymize",
    "on_correction",
)
MAX_NAME: Final = 64
MAX_STABLE_SECONDS: Final = 7 * 86400
MAX_DESTINATIONS: Final = 16
_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class InvalidRule(ArchiveError, ValueError):
    """A rule that cannot be used; the message names the rule and the key."""


class RuleConflict(ArchiveError):
    """A rule of that name exists already, or the rule is in the config file (read-only)."""


@dataclass(frozen=True)
class Rule:
    name: str
    when: Trigger
    #: (keyword, value) pairs, matched as C-FIND matching keys (lists joined by "\").
    match: tuple[tuple[str, str], ...] = ()
    #: Labels (core/labels.py) the study must carry, every one, when the rule runs.
    labels: tuple[str, ...] = ()
    calling_aet: str = ""
    called_aet: str = ""
    stable_seconds: float = 0.0
    level: str = "study"
    send_to: tuple[str, ...] = ()
    stow_to: tuple[str, ...] = ()
    prefetch_from: str = ""
    prefetch_to: str = ""
    #: De-identify before sending (docs/ROUTING.md): None no; () the basic profile; else its options.
    anonymize: tuple[str, ...] | None = None
    #: After a correction of what it delivered: send the corrected instances again (the default) or not.
    on_correction: OnCorrection = OnCorrection.RESEND
    #: "config" (the file: read-only) or "api" (the index).
    source: str = "config"
    created_at: dt.datetime | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The rule with the keys of a ``[[rules]]`` table (only those set), plus ``source``."""
        out: dict[str, Any] = {"name": self.name, "when": self.when.value}
        if self.when is Trigger.STABLE:
            out["stable_seconds"] = self.stable_seconds
            out["level"] = self.level
        if self.match:
            out["match"] = {k: (v.split("\\") if "\\" in v else v) for k, v in self.match}
        if self.labels:
            out["labels"] = list(self.labels)
        for key in ("calling_aet", "called_aet", "prefetch_from", "prefetch_to"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        for key in ("send_to", "stow_to"):
            if getattr(self, key):
                out[key] = list(getattr(self, key))
        if self.anonymize is not None:
            out["anonymize"] = list(self.anonymize) if self.anonymize else True
        if self.on_correction is not OnCorrection.RESEND:
            out["on_correction"] = self.on_correction.value
        return out

    def to_json(self) -> dict[str, Any]:
        return {**self.to_dict(), "source": self.source, "read_only": self.source == "config"}

    def identifier(self, extra: Mapping[str, str] | None = None, *, level: str | None = "IMAGE") -> Dataset:
        """The rule's ``match`` as a C-FIND identifier (relational, at ``level``; None: no
        QueryRetrieveLevel), plus ``extra`` keys."""
        ds = Dataset()
        for keyword, value in (*self.match, *(extra or {}).items()):
            tag = tag_for_keyword(keyword)
            if tag is None:  # pragma: no cover - checked when the rule was read
                continue
            ds[tag] = DataElement(tag, dictionary_VR(tag), value or None, validation_mode=pydicom.config.IGNORE)
        if level is not None:
            ds.QueryRetrieveLevel = level
        return ds

    def keys(self) -> tuple[Key, ...]:
        """The ``match`` keys, classified (for matching a worklist entry in Python, PS3.4 K.6.1.2.2)."""
        return read_keys(self.identifier(level=None))

    def from_ae(self, calling: str, called: str) -> bool:
        """Whether an instance brought by ``calling`` to ``called`` passes the AE title filters."""
        return (not self.calling_aet or wildcard_match(self.calling_aet, calling.strip())) and (
            not self.called_aet or wildcard_match(self.called_aet, called.strip())
        )

    def destinations(self) -> list[tuple[str, str]]:
        """(method, destination) of each delivery a matching study gets."""
        return [("C-STORE", ae) for ae in self.send_to] + [("STOW-RS", url) for url in self.stow_to]


def _text(rule: str, key: str, raw: Any, limit: int = 200) -> str:
    if not isinstance(raw, str) or len(raw) > limit:
        raise InvalidRule(f"rule {rule!r}: {key} must be text of at most {limit} characters")
    return raw.strip()


def _titles(rule: str, key: str, raw: Any) -> tuple[str, ...]:
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(i, str) and i.strip() for i in items):
        raise InvalidRule(f'rule {rule!r}: {key} must be a list of AE titles, e.g. {key} = ["AI_NODE"]')
    if len(items) > MAX_DESTINATIONS:
        raise InvalidRule(f"rule {rule!r}: {key} lists {len(items)} destinations; at most {MAX_DESTINATIONS}")
    return tuple(normalise_title(i) for i in items)


def _urls(rule: str, raw: Any) -> tuple[str, ...]:
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise InvalidRule(f"rule {rule!r}: stow_to must be a list of DICOMweb URLs")
    if len(items) > MAX_DESTINATIONS:
        raise InvalidRule(f"rule {rule!r}: stow_to lists {len(items)} URLs; at most {MAX_DESTINATIONS}")
    for url in items:
        if not re.match(r"^https?://[^/\s]+(/\S*)?$", url):
            raise InvalidRule(
                f"rule {rule!r}: stow_to {url[:80]!r} is not an http:// or https:// URL "
                "(the DICOMweb base, e.g. https://pacs.example/dicom-web)"
            )
    return tuple(u.rstrip("/") for u in items)


def _match(rule: str, raw: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, Mapping):
        raise InvalidRule(f'rule {rule!r}: match must be a table of DICOM keywords, e.g. match = {{ Modality = "CT" }}')
    pairs: list[tuple[str, str]] = []
    for keyword, value in raw.items():
        if keyword not in INDEXED_KEYS:
            known = ", ".join(sorted(INDEXED_KEYS))
            raise InvalidRule(
                f"rule {rule!r}: match key {str(keyword)[:64]!r} is not an attribute the index holds; "
                f"use one of {known}"
            )
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            text = "\\".join(value)  # PS3.4 C.2.2.2.1 value list
        elif isinstance(value, str):
            text = value
        else:
            raise InvalidRule(f"rule {rule!r}: match.{keyword} must be text or a list of text")
        if not text or len(text) > 1024:
            raise InvalidRule(f"rule {rule!r}: match.{keyword} must be 1 to 1024 characters (use '*' for any)")
        if not text.isprintable():  # a NUL or line break matches nothing an index holds (PS3.5 6.1.2.3)
            raise InvalidRule(f"rule {rule!r}: match.{keyword} holds a control character; give printable text")
        pairs.append((str(keyword), text))
    probe = Rule(rule, Trigger.INSTANCE, tuple(pairs))
    try:
        probe.keys()
    except InvalidKeyValue as exc:
        raise InvalidRule(f"rule {rule!r}: match: {exc}") from None
    return tuple(pairs)


def _anonymize(rule: str, raw: Any) -> tuple[str, ...] | None:
    """``anonymize``: false (default), true (PS3.15 E.1 basic profile) or a list of its options."""
    if raw is False:
        return None
    if raw is True:
        return ()
    if not isinstance(raw, list) or not all(isinstance(o, str) for o in raw):
        raise InvalidRule(
            f"rule {rule!r}: anonymize must be true, false or a list of de-identification options, e.g. "
            'anonymize = ["retain-long-modified-dates"] (docs/ANONYMIZATION.md lists them)'
        )
    try:
        return tuple(sorted(check_options(raw)))
    except InvalidDeidOptions as exc:
        raise InvalidRule(f"rule {rule!r}: anonymize: {exc}") from None


def _on_correction(rule: str, when: Trigger, raw: Mapping[str, Any]) -> OnCorrection:
    """``on_correction``: "resend" (default) or "ignore"; only for rules that send (a prefetch has the
    source node send, not this archive: it has nothing to send again)."""
    if "on_correction" not in raw:
        return OnCorrection.RESEND
    value = raw["on_correction"]
    if when is Trigger.SCHEDULED:
        raise InvalidRule(
            f"rule {rule!r}: on_correction belongs to rules that send (send_to, stow_to), not to prefetch"
        )
    try:
        return OnCorrection(value)
    except ValueError:
        raise InvalidRule(
            f"rule {rule!r}: on_correction {str(value)[:40]!r} must be "
            + " or ".join(f'"{o.value}"' for o in OnCorrection)
            + " (send corrected instances again to the destinations that received them, or not)"
        ) from None


def rule_from_mapping(raw: Mapping[str, Any], *, source: str = "config") -> Rule:
    """A ``[[rules]]`` table (or an API body) -> a Rule, or InvalidRule naming the rule and the key."""
    if not isinstance(raw, Mapping):
        raise InvalidRule("a rule must be a table (TOML [[rules]]) or a JSON object")
    name = raw.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME or not _NAME.match(name):
        raise InvalidRule(
            f"rule name {str(name)[:80]!r} must be 1 to {MAX_NAME} letters, digits, '.', '_' or '-' (e.g. \"ct-to-ai\")"
        )
    unknown = sorted(set(raw) - set(RULE_KEYS))
    if unknown:
        raise InvalidRule(f"rule {name!r}: unknown key {unknown[0][:40]!r}; a rule has {', '.join(RULE_KEYS)}")
    try:
        when = Trigger(raw.get("when", ""))
    except ValueError:
        raise InvalidRule(
            f"rule {name!r}: when {str(raw.get('when'))[:40]!r} must be one of {', '.join(t.value for t in Trigger)}"
        ) from None
    stable = raw.get("stable_seconds", 0)
    if when is Trigger.STABLE:
        if isinstance(stable, bool) or not isinstance(stable, (int, float)) or not 0 < stable <= MAX_STABLE_SECONDS:
            raise InvalidRule(
                f'rule {name!r}: when = "stable" needs stable_seconds, more than 0 and at most {MAX_STABLE_SECONDS}'
            )
    elif "stable_seconds" in raw or "level" in raw:
        raise InvalidRule(f'rule {name!r}: stable_seconds and level belong to when = "stable" rules only')
    level = raw.get("level", "study")
    if level not in LEVELS:
        raise InvalidRule(f'rule {name!r}: level {str(level)[:20]!r} must be "study" or "series"')
    send_to = _titles(name, "send_to", raw["send_to"]) if "send_to" in raw else ()
    stow_to = _urls(name, raw["stow_to"]) if "stow_to" in raw else ()
    prefetch_from = normalise_title(_text(name, "prefetch_from", raw.get("prefetch_from", ""), 16))
    prefetch_to = normalise_title(_text(name, "prefetch_to", raw.get("prefetch_to", ""), 16))
    if when is Trigger.SCHEDULED:
        if not (prefetch_from and prefetch_to) or send_to or stow_to:
            raise InvalidRule(
                f'rule {name!r}: a when = "scheduled" rule prefetches: it needs prefetch_from (the node holding '
                "the priors) and prefetch_to (the C-MOVE destination), and no send_to or stow_to"
            )
    elif prefetch_from or prefetch_to:
        raise InvalidRule(f'rule {name!r}: prefetch_from and prefetch_to belong to when = "scheduled" rules only')
    elif not (send_to or stow_to):
        raise InvalidRule(f"rule {name!r}: it does nothing; give send_to (AE titles) and/or stow_to (DICOMweb URLs)")
    anonymize = _anonymize(name, raw.get("anonymize", False))
    if anonymize is not None and when is Trigger.SCHEDULED:
        raise InvalidRule(f"rule {name!r}: anonymize belongs to rules that send (send_to, stow_to), not to prefetch")
    on_correction = _on_correction(name, when, raw)
    try:
        labels = rule_labels(raw.get("labels", []))
    except InvalidLabel as exc:
        raise InvalidRule(f"rule {name!r}: {exc}") from None
    if labels and when is Trigger.SCHEDULED:
        raise InvalidRule(
            f'rule {name!r}: labels cannot filter a when = "scheduled" rule: it matches a worklist entry, '
            "which carries no labels (labels are put on stored studies); use match"
        )
    return Rule(
        name=name,
        when=when,
        match=_match(name, raw.get("match", {})),
        labels=labels,
        calling_aet=_text(name, "calling_aet", raw.get("calling_aet", ""), 16),
        called_aet=_text(name, "called_aet", raw.get("called_aet", ""), 16),
        stable_seconds=float(stable) if when is Trigger.STABLE else 0.0,
        level=level,
        send_to=send_to,
        stow_to=stow_to,
        prefetch_from=prefetch_from,
        prefetch_to=prefetch_to,
        anonymize=anonymize,
        on_correction=on_correction,
        source=source,
    )


def rules_from_tables(tables: Any) -> tuple[Rule, ...]:
    """``[[rules]]`` tables -> rules; InvalidRule naming the bad one (also: two rules of one name)."""
    if not isinstance(tables, list):
        raise InvalidRule("'rules' must be [[rules]] tables (name, when, match, send_to, ...)")
    rules: list[Rule] = []
    for number, table in enumerate(tables, 1):
        try:
            rule = rule_from_mapping(table)
        except InvalidRule as exc:
            raise InvalidRule(f"[[rules]] number {number}: {exc}") from None
        if any(r.name == rule.name for r in rules):
            raise InvalidRule(f"[[rules]] number {number}: a rule named {rule.name!r} is already defined above")
        rules.append(rule)
    return tuple(rules)


def check_against_nodes(rules: Sequence[Rule], nodes: Sequence[Node]) -> list[str]:
    """Problems of ``rules`` with the AE registry, one sentence each naming the rule: a destination or
    prefetch source that is not registered, or registered twice (which one to call?)."""
    titles: dict[str, int] = {}
    for node in nodes:
        titles[node.ae_title] = titles.get(node.ae_title, 0) + 1
    problems: list[str] = []
    for rule in rules:
        wanted = [("send_to", t) for t in rule.send_to]
        if rule.prefetch_from:
            wanted.append(("prefetch_from", rule.prefetch_from))
        for key, title in wanted:
            count = titles.get(title, 0)
            if count == 0:
                problems.append(
                    f"rule {rule.name!r}: {key} names {title!r}, which is not a registered node; register it "
                    f"([[nodes]] in the config, `minipacs nodes add` or POST /api/nodes) or correct the rule"
                )
            elif count > 1:
                problems.append(
                    f"rule {rule.name!r}: {key} names {title!r}, which is registered {count} times (on "
                    "different hosts); keep one, or give the others their own AE titles"
                )
    return problems


class RuleBook:
    """The rules in force: the config file's (read-only) and the index's (``/api/rules``, shared)."""

    def __init__(self, index: IndexAccess, config_rules: Sequence[Rule] = (), nodes: Any = None) -> None:
        self.index = index
        self.config_rules = tuple(config_rules)
        #: A NodeRegistry (or anything with ``list()``) to check destinations of new rules; None: unchecked.
        self.nodes = nodes

    async def stored(self) -> list[Rule]:
        rows = await self.index.read(routing_repo.rule_rows)
        out: list[Rule] = []
        for row in rows:
            try:
                rule = rule_from_mapping(json.loads(row["definition"]), source="api")
            except (InvalidRule, ValueError):
                continue  # written by a newer version, or damaged: skipped (GET shows what is usable)
            out.append(Rule(**{**rule.__dict__, "created_at": row["created_at"]}))
        return out

    async def all(self) -> list[Rule]:
        stored = [r for r in await self.stored() if r.name not in {c.name for c in self.config_rules}]
        return [*self.config_rules, *stored]

    async def get(self, name: str) -> Rule:
        for rule in await self.all():
            if rule.name == name:
                return rule
        raise NotFound(f"no rule {name[:64]!r} (GET /api/rules lists them)")

    async def _checked(self, raw: Mapping[str, Any]) -> Rule:
        rule = rule_from_mapping(raw, source="api")
        if self.nodes is not None:
            problems = check_against_nodes([rule], await self.nodes.list())
            if problems:
                raise InvalidRule(problems[0])
        return rule

    def _read_only(self, name: str) -> None:
        if any(r.name == name for r in self.config_rules):
            raise RuleConflict(
                f"rule {name!r} is defined in the config file and is read-only here; change it in the file "
                "and restart, or create a rule with another name"
            )

    async def create(self, raw: Mapping[str, Any]) -> Rule:
        rule = await self._checked(raw)
        self._read_only(rule.name)
        definition = json.dumps(rule.to_dict(), sort_keys=True)
        now = dt.datetime.now(dt.UTC)
        if not await self.index.write(lambda conn: routing_repo.insert_rule(conn, rule.name, definition, now)):
            raise RuleConflict(f"a rule named {rule.name!r} exists already; PUT /api/rules/{rule.name} changes it")
        return await self.get(rule.name)

    async def replace(self, name: str, raw: Mapping[str, Any]) -> Rule:
        self._read_only(name)
        rule = await self._checked({**raw, "name": raw.get("name", name)})
        if rule.name != name:
            raise InvalidRule(f"the body names rule {rule.name!r} but the URL names {name!r}; a rule is not renamed")
        definition = json.dumps(rule.to_dict(), sort_keys=True)
        now = dt.datetime.now(dt.UTC)
        if not await self.index.write(lambda conn: routing_repo.update_rule(conn, name, definition, now)):
            raise NotFound(f"no rule {name[:64]!r} made through the API (POST /api/rules creates one)")
        return await self.get(name)

    async def delete(self, name: str) -> None:
        self._read_only(name)
        if not await self.index.write(lambda conn: routing_repo.delete_rule(conn, name)):
            raise NotFound(f"no rule {name[:64]!r} made through the API")


__all__ = [
    "LEVELS",
    "RULE_KEYS",
    "TRIGGERS",
    "InvalidRule",
    "OnCorrection",
    "Rule",
    "RuleBook",
    "RuleConflict",
    "Trigger",
    "check_against_nodes",
    "rule_from_mapping",
    "rules_from_tables",
]
