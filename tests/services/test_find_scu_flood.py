"""A peer that answers our C-FIND with more than we can use (services/find_scu.py, net/association.py).

The responses of an association we open are untrusted input like any other: a hostile or merely huge
archive may answer a C-FIND with thousands of Pending responses, each identifier up to
``memory_dataset_max_bytes``, faster than we use them, and keep sending after our C-CANCEL
(PS3.4 C.4.1.2.3 allows matches "in transit" before the Cancel response; a peer may ignore it).

- Reading pauses while the responses queued for the request hold more than ``max_memory_dataset``
  bytes: TCP holds the rest at the peer (what reaches memory is bounded per association).
- ``find_all`` keeps at most ``cancel_after`` matches, and ``Outbound.query`` at most
  ``remote_find_max_matches``: past it C-CANCEL is sent and the rest counted, not kept.

The peer is pynetdicom's C-FIND SCP, which sends every match of its handler without waiting for us.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest

from minipacs.dicom.uids import IMPLICIT_VR_LITTLE_ENDIAN, STUDY_ROOT_FIND
from minipacs.net.association import RESPONSE_OVERHEAD, AssociationSettings, build_rq, connect
from minipacs.net.dul import Timeouts
from minipacs.services.find_scu import build_identifier, find, find_all
from minipacs.services.outbound import Address, FindRequest, Outbound, OutboundSettings
from tests.peers import free_port

IDENTIFIER_TEXT = 60_000  # bytes of Text Value (UT) in each match


@pytest.fixture
def flooding_peer() -> Iterator[tuple[int, dict[str, Any]]]:
    """pynetdicom as a Study Root C-FIND SCP answering ``state["matches"]`` matches of ~60 kB each, and
    counting how many it sent (it checks for our C-CANCEL between matches only if ``state["honour"]``)."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

    state: dict[str, Any] = {"matches": 300, "sent": 0, "honour": True}

    def on_find(event: Any) -> Iterator[tuple[int, pydicom.Dataset | None]]:
        for n in range(state["matches"]):
            if state["honour"] and event.is_cancelled:
                yield 0xFE00, None
                return
            ds = pydicom.Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.StudyInstanceUID = f"1.2.826.0.1.3680043.10.543.{n + 1}"
            ds.add_new(0x0040A160, "UT", "x" * IDENTIFIER_TEXT)  # Text Value: a large identifier
            state["sent"] += 1
            yield 0xFF00, ds
        yield 0x0000, None

    ae = AE(ae_title="FLOODER")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind, IMPLICIT_VR_LITTLE_ENDIAN)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)])
    try:
        yield port, state
    finally:
        server.shutdown()


def _settings(max_memory_dataset: int) -> AssociationSettings:
    return AssociationSettings(
        ae_title="MINIPACS",
        max_pdu_receive=16_384,
        max_memory_dataset=max_memory_dataset,
        timeouts=Timeouts(acse=10.0, dimse=30.0, idle=30.0),
    )


def _identifier() -> pydicom.Dataset:
    return build_identifier({"StudyInstanceUID": ""}, "STUDY")


@pytest.mark.parametrize("limit", [128 * 1024, 1024 * 1024])
def test_reading_pauses_while_the_queued_responses_hold_more_than_a_data_sets_worth(
    flooding_peer: tuple[int, dict[str, Any]], limit: int
) -> None:
    """A consumer slower than the peer: 300 matches of 60 kB (18 MB) would all queue up; with the pause,
    at most ``max_memory_dataset`` plus what one read brings (a PDU, a response) is ever queued."""
    port, state = flooding_peer

    async def main() -> tuple[int, int]:
        settings = _settings(limit)
        rq = build_rq("MINIPACS", "FLOODER", [(STUDY_ROOT_FIND, [IMPLICIT_VR_LITTLE_ENDIAN])], settings)
        assoc = await connect("127.0.0.1", port, rq, settings)
        try:
            matches = 0
            async for status, ds, _command in find(assoc, STUDY_ROOT_FIND, _identifier()):
                if status == 0xFF00:
                    assert ds is not None and len(ds.TextValue) == IDENTIFIER_TEXT
                    matches += 1
                    await asyncio.sleep(0.002)  # the slow consumer: ~0.6 s in all
            assert assoc.queued_response_bytes == 0
            return matches, assoc.most_queued_response_bytes
        finally:
            await assoc.release()

    matches, most = asyncio.run(main())
    assert matches == state["sent"] == 300
    one_response = IDENTIFIER_TEXT + 200 + RESPONSE_OVERHEAD
    assert most <= limit + one_response + 16_384, most
    assert most > limit  # it did fill up to the pause (the test would pass vacuously otherwise)


def test_a_peer_ignoring_c_cancel_has_its_extra_matches_dropped_not_kept(
    flooding_peer: tuple[int, dict[str, Any]],
) -> None:
    port, state = flooding_peer
    state["honour"] = False  # sends all 300 whatever we say

    async def main() -> Any:
        settings = _settings(1024 * 1024)
        rq = build_rq("MINIPACS", "FLOODER", [(STUDY_ROOT_FIND, [IMPLICIT_VR_LITTLE_ENDIAN])], settings)
        assoc = await connect("127.0.0.1", port, rq, settings)
        try:
            return await find_all(assoc, STUDY_ROOT_FIND, _identifier(), cancel_after=10)
        finally:
            await assoc.release()

    result = asyncio.run(main())
    assert result.cancelled_sent
    assert len(result.matches) == 10
    assert result.dropped == 290
    assert result.status == 0x0000


@pytest.mark.parametrize("honour", [True, False])
def test_outbound_query_keeps_at_most_remote_find_max_matches(
    flooding_peer: tuple[int, dict[str, Any]], honour: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """No cancel_after given (the prefetch of priors, the doctor): ``find_max_matches`` bounds what is
    kept; at it, C-CANCEL goes out; a caller's own smaller cancel_after still wins."""
    port, state = flooding_peer
    state["honour"] = honour

    async def main() -> tuple[Any, Any]:
        outbound = Outbound(OutboundSettings(_settings(1024 * 1024), connect_timeout=5.0, find_max_matches=50))
        peer = Address("FLOODER", "127.0.0.1", port)
        request = FindRequest.build({"StudyInstanceUID": ""}, model="study", level="STUDY")
        bounded = await outbound.query(peer, request)
        own = await outbound.query(peer, request, cancel_after=5)
        return bounded, own

    started = time.monotonic()
    bounded, own = asyncio.run(main())
    assert len(bounded.matches) == 50 and bounded.cancelled_sent
    assert len(own.matches) == 5
    # what the peer sent past the 50th before it saw the C-CANCEL (pynetdicom may have sent all of them
    # already) is counted, not kept; the final status is the peer's (0xFE00 or 0x0000)
    assert bounded.status in (0xFE00, 0x0000)
    assert bounded.dropped == state["sent"] - 50 - 5 - own.dropped
    assert "remote_find_max_matches" in caplog.text
    assert time.monotonic() - started < 60


@pytest.mark.parametrize(("value", "valid"), [(1, True), (10_000_000, True), (0, False), (10_000_001, False)])
def test_remote_find_max_matches_is_checked_at_its_limits(tmp_path: Any, value: int, valid: bool) -> None:
    from minipacs.config import ConfigError, Settings

    settings = Settings(data_dir=tmp_path, remote_find_max_matches=value)
    if valid:
        settings.validate()
    else:
        with pytest.raises(ConfigError, match="remote_find_max_matches"):
            settings.validate()
