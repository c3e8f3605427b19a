"""Audit Log Used: reading the audit trail (GET /api/audit, /ui/audit) is itself in the trail, as
a PS3.15 A.5 Audit Log Used message (EventID 110101, action R, the audit log as a security resource)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from xml.etree import ElementTree as ET

import httpx

from minipacs.core.archive import Archive
from minipacs.core.atna import audit_message
from tests.web.test_auth import USERS, basic

ADMIN = basic("ada", "a-pass")


def test_reading_the_audit_trail_is_audited(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        for _ in range(3):  # the same reader and filters within a minute: one row
            assert (await client.get("/api/audit", params={"patient": "P1"}, headers=ADMIN)).json() == []
        assert (await client.get("/api/audit", headers=basic("vic", "v-pass"))).status_code == 403  # not read
        page = await client.get("/ui/audit", headers=ADMIN)
        assert page.status_code == 200 and "/api/audit?patient=P1" in page.text and "audit_read" in page.text
        rows = (await client.get("/api/audit", params={"user": "ada"}, headers=ADMIN)).json()
        got = [(r["action"], r["actor_kind"], r["actor"], r["address"], r["detail"], r["outcome"]) for r in rows]
        assert got == [
            ("audit_read", "user", "ada", "127.0.0.1", "/ui/audit", 0),
            ("audit_read", "user", "ada", "127.0.0.1", "/api/audit?patient=P1", 0),
        ], got  # the page's own read, and the API's; this read is recorded after its answer
        (stored,) = [r for r in await archive.audit.query(actor="ada") if r["id"] == rows[1]["id"]]
        root = ET.fromstring(audit_message(stored, "MINIPACS"))
        ident = root.find("EventIdentification")
        assert ident is not None and ident.get("EventActionCode") == "R" and ident.get("EventOutcomeIndicator") == "0"
        event = ident.find("EventID")
        assert event is not None and event.get("csd-code") == "110101" and event.get("originalText") == "Audit Log Used"
        users = [(p.get("UserID"), p.get("UserIsRequestor")) for p in root.iter("ActiveParticipant")]
        assert users == [("ada", "true"), ("MINIPACS", "false")]
        (used,) = root.iter("ParticipantObjectIdentification")
        assert (used.get("ParticipantObjectID"), used.get("ParticipantObjectTypeCode")) == ("/api/audit", "2")
        assert used.get("ParticipantObjectTypeCodeRole") == "13"  # security resource
        kind = used.find("ParticipantObjectIDTypeCode")
        assert kind is not None and (kind.get("csd-code"), kind.get("codeSystemName")) == ("12", "RFC-3881")
        assert used.findtext("ParticipantObjectDescription") == "/api/audit?patient=P1"

    web(body, users=USERS)
