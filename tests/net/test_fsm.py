"""The upper-layer state machine, one test per row of PS3.8 Table 9-10.

Each row of ``TRANSITION_TABLE`` (``minipacs.net.dul``) is driven through a real :class:`UpperLayer`
on a fake transport: the layer is put in the row's state, the event is fired,
and the test checks the action's effect (the PDU bytes written, the ARTIM
timer, the transport, the user callbacks) and the resulting state. Expected
PDU bytes are built by hand from PS3.8 Tables 9-21..9-26, not by our codec.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from pynetdicom import fsm as pynetdicom_fsm

from minipacs.net.dul import TRANSITION_TABLE, Timeouts, UpperLayer, UpperLayerUser, action_name
from minipacs.net.fsm import USER_PRIMITIVES, Event, InvalidTransition, State
from minipacs.net.pdu import (
    PDU,
    PDV,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    encode_pdu,
)
from minipacs.net.pdu_items import PresentationContextAC, PresentationContextRQ, UserInformation

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


# ------------------------------------------------------------ expected bytes
def abort_bytes(source: int, reason: int) -> bytes:
    """PS3.8 Table 9-26: type 07H, length 4, two reserved, source, reason."""
    return struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, source, reason)


RELEASE_RQ_BYTES = struct.pack(">BBL4x", 0x05, 0, 4)  # PS3.8 Table 9-24
RELEASE_RP_BYTES = struct.pack(">BBL4x", 0x06, 0, 4)  # PS3.8 Table 9-25
REJECT_BYTES = struct.pack(">BBLBBBB", 0x03, 0, 4, 0, 1, 1, 7)  # PS3.8 Table 9-21

# One PDU of each type a PDU event carries
RQ = AAssociateRQ(
    called_ae="ANY-SCP",
    calling_ae="ECHOSCU",
    presentation_contexts=[PresentationContextRQ(1, VERIFICATION, [IMPLICIT_LE])],
    user_information=UserInformation(maximum_length=16384, implementation_class_uid="1.2.3.4"),
)
AC = AAssociateAC(
    called_ae="ANY-SCP",
    calling_ae="ECHOSCU",
    presentation_contexts=[PresentationContextAC(1, 0, IMPLICIT_LE)],
    user_information=UserInformation(maximum_length=16384, implementation_class_uid="1.2.3.4"),
)
RJ = AAssociateRJ(1, 1, 7)
PDATA = PDataTF([PDV(1, True, True, b"\x00\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00")])
PDATA_BYTES = (
    struct.pack(">BBL", 0x04, 0, 4 + 2 + 12)  # PS3.8 Table 9-22
    + struct.pack(">LBB", 2 + 12, 1, 0x03)  # PS3.8 Table 9-23 and Annex E.2: command, last
    + PDATA.pdvs[0].data
)
PEER_ABORT = AAbort(0, 0)

#: The PDU carried by each PDU event (PS3.8 Table 9-2)
EVENT_PDU: dict[Event, PDU] = {
    Event.EVT3: AC,
    Event.EVT4: RJ,
    Event.EVT6: RQ,
    Event.EVT9: PDATA,  # the P-DATA request primitive carries the PDU to send
    Event.EVT10: PDATA,
    Event.EVT12: AReleaseRQ(),
    Event.EVT13: AReleaseRP(),
    Event.EVT16: PEER_ABORT,
}
LOCAL_PRIMITIVES = (Event.EVT1, Event.EVT7, Event.EVT8, Event.EVT9, Event.EVT11, Event.EVT14, Event.EVT15)
#: Evt19 is fired after a decode error recorded this A-ABORT (reason 4: unrecognized parameter)
DECODE_ERROR_ABORT = AAbort(2, 4)


# ------------------------------------------------------------ fakes
class FakeWriter:
    """Records what the layer writes; stands in for asyncio.StreamWriter."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes | memoryview) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> object:
        return None

    async def drain(self) -> None:
        pass


@dataclass
class RecordingUser(UpperLayerUser):
    reply: AAssociateAC | AAssociateRJ = field(default_factory=lambda: AC)
    calls: list[str] = field(default_factory=list)
    received: list[PDU] = field(default_factory=list)
    #: Run inside associate_confirmed / pdata_indication, i.e. inside the action
    inside_action: Callable[[], None] | None = None

    def negotiate(self, rq: AAssociateRQ) -> AAssociateAC | AAssociateRJ:
        self.calls.append("negotiate")
        self.received.append(rq)
        return self.reply

    def associate_confirmed(self, pdu: AAssociateAC | AAssociateRJ) -> None:
        self.calls.append("associate_confirmed")
        self.received.append(pdu)
        if self.inside_action is not None:
            self.inside_action()

    def pdata_indication(self, pdu: PDataTF) -> None:
        self.calls.append("pdata_indication")
        self.received.append(pdu)
        if self.inside_action is not None:
            self.inside_action()

    def release_indication(self) -> None:
        self.calls.append("release_indication")

    def release_confirmed(self) -> None:
        self.calls.append("release_confirmed")

    def aborted(self, description: str) -> None:
        self.calls.append("aborted")


@dataclass
class Harness:
    layer: UpperLayer
    writer: FakeWriter
    user: RecordingUser

    @property
    def artim_running(self) -> bool:
        return self.layer._artim is not None

    @property
    def state(self) -> State:
        """Read afresh after each await (keeps the type checker from narrowing)."""
        return self.layer.state


def make_layer(state: State, *, is_requestor: bool = False, reply: AAssociateAC | AAssociateRJ = AC) -> Harness:
    """An UpperLayer in ``state`` on a fake transport, with ARTIM running so that stops show."""
    writer = FakeWriter()
    user = RecordingUser(reply=reply)
    layer = UpperLayer(
        asyncio.StreamReader(),
        writer,  # type: ignore[arg-type]
        user,
        is_requestor=is_requestor,
        max_pdu_receive=16384,
        timeouts=Timeouts(acse=30, dimse=30, idle=30),
        label="[test]",
    )
    layer.state = state
    layer._start_artim()
    return Harness(layer, writer, user)


async def settle() -> None:
    """Let call_soon callbacks (AE-6's response, AR-8/AR-10's collision answer) run."""
    for _ in range(3):
        await asyncio.sleep(0)


# ---------------------------------------------------- expected effects per action
@dataclass(frozen=True)
class Effect:
    """What an action visibly does (PS3.8 Tables 9-6..9-9)."""

    writes: Callable[[Event], bytes] = lambda _e: b""
    calls: tuple[str, ...] = ()
    artim: bool | None = None  # True started, False stopped, None untouched
    closes: bool = False


def _protocol_abort(event: Event) -> bytes:
    """A-ABORT for a provider-detected error: the decode error's reason for Evt19,
    'unexpected PDU' (2) for a PDU not allowed in the state (PS3.8 Table 9-26)."""
    if event is Event.EVT19:
        return abort_bytes(DECODE_ERROR_ABORT.source, DECODE_ERROR_ABORT.reason)
    return abort_bytes(2, 2)


def _aa_1(event: Event) -> bytes:
    return abort_bytes(0, 0) if event is Event.EVT15 else _protocol_abort(event)


# PS3.8 Tables 9-6 (AE), 9-7 (DT), 9-8 (AR), 9-9 (AA): the effect we check for each action
EFFECTS: dict[str, Effect] = {
    "AE-1": Effect(),
    "AE-2": Effect(writes=lambda _e: encode_pdu(RQ)),
    "AE-3": Effect(calls=("associate_confirmed",)),
    "AE-4": Effect(calls=("associate_confirmed",), closes=True),
    "AE-5": Effect(artim=True),
    "AE-6": Effect(calls=("negotiate",), artim=False),  # acceptable: AC follows via Evt7
    "AE-7": Effect(writes=lambda _e: encode_pdu(AC)),
    "AE-8": Effect(writes=lambda _e: REJECT_BYTES, artim=True),
    "DT-1": Effect(writes=lambda _e: PDATA_BYTES),
    "DT-2": Effect(calls=("pdata_indication",)),
    "AR-1": Effect(writes=lambda _e: RELEASE_RQ_BYTES),
    "AR-2": Effect(calls=("release_indication",)),
    "AR-3": Effect(calls=("release_confirmed",), closes=True),
    "AR-4": Effect(writes=lambda _e: RELEASE_RP_BYTES, artim=True),
    "AR-5": Effect(artim=False),
    "AR-6": Effect(calls=("pdata_indication",)),
    "AR-7": Effect(writes=lambda _e: PDATA_BYTES),
    "AR-8": Effect(),  # the collision answer follows on the next loop turn
    "AR-9": Effect(writes=lambda _e: RELEASE_RP_BYTES),
    "AR-10": Effect(calls=("release_confirmed",)),
    "AA-1": Effect(writes=_aa_1, calls=("aborted",), artim=True),
    "AA-2": Effect(artim=False, closes=True),
    "AA-3": Effect(calls=("aborted",), closes=True),
    "AA-4": Effect(calls=("aborted",)),
    "AA-5": Effect(artim=False),
    "AA-6": Effect(),
    "AA-7": Effect(writes=_protocol_abort),
    "AA-8": Effect(writes=_protocol_abort, calls=("aborted",), artim=True),
}


def test_every_action_has_an_effect_and_is_used() -> None:
    """All 28 actions of PS3.8 Tables 9-6..9-9 appear in the table, each an UpperLayer method."""
    used = {action_name(action) for action, _next in TRANSITION_TABLE.values()}
    assert used == set(EFFECTS) == set(pynetdicom_fsm.ACTIONS)
    for action, _next in TRANSITION_TABLE.values():
        assert getattr(UpperLayer, action.__name__) is action


def test_action_name() -> None:
    assert action_name(UpperLayer._ar_10) == "AR-10"
    assert action_name(UpperLayer._dt_1) == "DT-1"


def fire(h: Harness, event: Event) -> None:
    """Fire ``event`` the way the driver does, with the PDU or pending reply it needs."""
    if event is Event.EVT2:
        h.layer._pending_reply = RQ
    elif event is Event.EVT7:
        h.layer._pending_reply = AC
    elif event is Event.EVT8:
        h.layer._pending_reply = RJ
    elif event is Event.EVT19:
        h.layer._abort_pdu = DECODE_ERROR_ABORT
    h.layer.event(event, EVENT_PDU.get(event))


#: (event, state, action name) for every cell of PS3.8 Table 9-10
ROWS = sorted((event, state, action_name(action)) for (event, state), (action, _next) in TRANSITION_TABLE.items())


def expected_next_state(event: Event, state: State, is_requestor: bool) -> State:
    """The table's next state; for AE-6 and AR-8 the branch PS3.8 Tables 9-6 and 9-8 name
    (the harness's user accepts every A-ASSOCIATE-RQ)."""
    name = action_name(TRANSITION_TABLE[(event, state)][0])
    if name == "AE-6":
        return State.STA3
    if name == "AR-8":
        return State.STA9 if is_requestor else State.STA10
    fixed = TRANSITION_TABLE[(event, state)][1]
    assert isinstance(fixed, State), name
    return fixed


@pytest.mark.parametrize("is_requestor", [False, True], ids=["acceptor", "requestor"])
@pytest.mark.parametrize(("event", "state", "name"), ROWS, ids=[f"{e.name}-{s.name}-{a}" for e, s, a in ROWS])
def test_transition_row(event: Event, state: State, name: str, is_requestor: bool) -> None:
    async def run() -> None:
        h = make_layer(state, is_requestor=is_requestor)
        artim_before = h.layer._artim
        fire(h, event)
        effect = EFFECTS[name]

        assert h.layer.state is expected_next_state(event, state, is_requestor)
        assert bytes(h.writer.data) == effect.writes(event)
        assert tuple(h.user.calls) == effect.calls
        if set(effect.calls) & {"negotiate", "associate_confirmed", "pdata_indication"}:
            assert h.user.received == [EVENT_PDU[event]]
        assert h.writer.closed is effect.closes
        if effect.artim is True:
            assert h.artim_running and h.layer._artim is not artim_before, "ARTIM (re)started"
        elif effect.artim is False:
            assert not h.artim_running, "ARTIM stopped"
        else:
            assert h.layer._artim is artim_before, "ARTIM untouched"
        h.layer._stop_artim()

    asyncio.run(run())


# ------------------------------------------------ conditional and chained rows
def test_ae6_acceptable_then_ae7_sends_the_ac() -> None:
    """Evt6 in Sta2, acceptable: Sta3, then the local response (Evt7 -> AE-7) on the next turn."""

    async def run() -> None:
        h = make_layer(State.STA2, reply=AC)
        h.layer.event(Event.EVT6, RQ)
        assert h.layer.state is State.STA3
        assert h.writer.data == b""
        await settle()
        assert h.state is State.STA6
        assert bytes(h.writer.data) == encode_pdu(AC)
        assert not h.artim_running

    asyncio.run(run())


def test_ae6_not_acceptable_sends_rj_and_starts_artim() -> None:
    """Evt6 in Sta2, not acceptable: A-ASSOCIATE-RJ sent, ARTIM started, Sta13."""

    async def run() -> None:
        h = make_layer(State.STA2, reply=RJ)
        h.layer.event(Event.EVT6, RQ)
        assert h.layer.state is State.STA13
        assert bytes(h.writer.data) == REJECT_BYTES
        assert h.artim_running
        assert h.user.calls == ["negotiate"]
        h.layer._stop_artim()

    asyncio.run(run())


@pytest.mark.parametrize(
    ("is_requestor", "after_ar8", "final", "written"),
    [
        # Requestor: Sta9, answers at once (Evt14 -> AR-9 sends A-RELEASE-RP), Sta11
        (True, State.STA9, State.STA11, RELEASE_RP_BYTES),
        # Acceptor: Sta10, waits for the requestor's A-RELEASE-RP
        (False, State.STA10, State.STA10, b""),
    ],
    ids=["requestor", "acceptor"],
)
def test_ar8_release_collision(is_requestor: bool, after_ar8: State, final: State, written: bytes) -> None:
    async def run() -> None:
        h = make_layer(State.STA7, is_requestor=is_requestor)
        h.layer.event(Event.EVT12, AReleaseRQ())
        assert h.layer.state is after_ar8
        await settle()
        assert h.state is final
        assert bytes(h.writer.data) == written
        h.layer._stop_artim()

    asyncio.run(run())


def test_release_collision_acceptor_completes() -> None:
    """Sta10 + A-RELEASE-RP (AR-10) -> Sta12, then the local answer (AR-4) -> Sta13."""

    async def run() -> None:
        h = make_layer(State.STA10)
        h.layer.event(Event.EVT13, AReleaseRP())
        assert h.layer.state is State.STA12
        assert h.user.calls == ["release_confirmed"]
        await settle()
        assert h.state is State.STA13
        assert bytes(h.writer.data) == RELEASE_RP_BYTES
        assert h.artim_running
        h.layer._stop_artim()

    asyncio.run(run())


# ------------------------------------------------ against an independent transcription
def test_table_matches_pynetdicom() -> None:
    """pynetdicom transcribed PS3.8 Table 9-10 independently; the tables must be identical."""
    theirs = {(int(e[3:]), int(s[3:])): a for (e, s), a in pynetdicom_fsm.TRANSITION_TABLE.items()}
    ours = {(int(e), int(s)): action_name(action) for (e, s), (action, _next) in TRANSITION_TABLE.items()}
    assert len(ours) == 123
    assert ours == theirs


def test_next_states_match_pynetdicom() -> None:
    """Next states agree too, cell by cell; pynetdicom lists both branches of AE-6 and AR-8,
    ours decides them from the layer (was the A-ASSOCIATE-RQ acceptable; are we the requestor)."""

    async def run() -> None:
        layers = []
        for is_requestor in (False, True):
            for acceptable in (False, True):
                layer = make_layer(State.STA1, is_requestor=is_requestor).layer
                layer._stop_artim()
                layer._rq_acceptable = acceptable
                layers.append(layer)
        for (event, state), (action, next_state) in TRANSITION_TABLE.items():
            name = action_name(action)
            their_next = pynetdicom_fsm.ACTIONS[name][2]
            where = f"{event.name} {state.name} {name}"
            if isinstance(next_state, State):
                assert f"Sta{int(next_state)}" == their_next, where
            else:
                assert name in ("AE-6", "AR-8"), where
                reached = {f"Sta{int(next_state(layer))}" for layer in layers}
                assert reached == set(their_next), where

    asyncio.run(run())


def test_conditional_next_states() -> None:
    """AE-6: Sta3 if acceptable else Sta13 (Table 9-6); AR-8: Sta9 requestor, Sta10 acceptor (Table 9-8)."""

    async def run() -> None:
        after_ae_6 = TRANSITION_TABLE[(Event.EVT6, State.STA2)][1]
        after_ar_8 = TRANSITION_TABLE[(Event.EVT12, State.STA7)][1]
        assert not isinstance(after_ae_6, State) and not isinstance(after_ar_8, State)
        h = make_layer(State.STA1, is_requestor=True)
        h.layer._stop_artim()
        h.layer._rq_acceptable = True
        assert (after_ae_6(h.layer), after_ar_8(h.layer)) == (State.STA3, State.STA9)
        h.layer._rq_acceptable = False
        h.layer.is_requestor = False
        assert (after_ae_6(h.layer), after_ar_8(h.layer)) == (State.STA13, State.STA10)

    asyncio.run(run())


# ------------------------------------------------ events raised inside an action
def test_event_raised_inside_an_action_runs_after_it(caplog: pytest.LogCaptureFixture) -> None:
    """The user aborts from inside AE-3: the abort waits until AE-3 has finished and
    Sta6 is set, then Evt15 runs in Sta6 (AA-1), not in Sta5 in the middle of AE-3."""
    caplog.set_level(logging.DEBUG, logger="minipacs.net")

    async def run() -> None:
        h = make_layer(State.STA5, is_requestor=True)
        seen: list[tuple[State, bytes]] = []

        def abort_now() -> None:
            h.layer.abort("changed my mind")
            seen.append((h.layer.state, bytes(h.writer.data)))

        h.user.inside_action = abort_now
        h.layer.event(Event.EVT3, AC)
        assert seen == [(State.STA5, b"")], "nothing happens until AE-3 returns"
        assert h.state is State.STA13
        assert bytes(h.writer.data) == abort_bytes(0, 0)
        assert h.user.calls == ["associate_confirmed", "aborted"]
        assert not h.layer._events, "queue drained"
        h.layer._stop_artim()

    asyncio.run(run())
    transitions = [r.getMessage() for r in caplog.records if "->" in r.getMessage()]
    assert transitions == ["[test] EVT3: AE-3 STA5 -> STA6", "[test] EVT15: AA-1 STA6 -> STA13"]


def test_events_raised_inside_an_action_run_in_order() -> None:
    """Two events raised by one action run first-in first-out, each after the previous one's action:
    A-RELEASE request (AR-1, Sta7) then A-ABORT request in Sta7 (AA-1, Sta13)."""

    async def run() -> None:
        h = make_layer(State.STA6)
        written_inside: list[bytes] = []

        def release_then_abort() -> None:
            h.layer.release_request()
            h.layer.abort("gave up")
            written_inside.append(bytes(h.writer.data))

        h.user.inside_action = release_then_abort
        h.layer.event(Event.EVT10, PDATA)
        assert written_inside == [b""]
        assert bytes(h.writer.data) == RELEASE_RQ_BYTES + abort_bytes(0, 0)
        assert h.state is State.STA13
        h.layer._stop_artim()

    asyncio.run(run())


def test_action_that_raises_drops_the_events_it_queued() -> None:
    """A user callback that fails after raising an event: the exception reaches the caller,
    the queued event is dropped, the state is unchanged, and the next event runs normally."""

    async def run() -> None:
        h = make_layer(State.STA6)

        def abort_then_fail() -> None:
            h.layer.abort("about to fail")
            raise RuntimeError("user callback failed")

        h.user.inside_action = abort_then_fail
        with pytest.raises(RuntimeError, match="user callback failed"):
            h.layer.event(Event.EVT10, PDATA)
        assert (h.state, bytes(h.writer.data)) == (State.STA6, b"")
        h.user.inside_action = None
        h.layer.event(Event.EVT12, AReleaseRQ())
        assert h.state is State.STA8
        assert h.user.calls == ["pdata_indication", "release_indication"]
        h.layer._stop_artim()

    asyncio.run(run())


def test_invalid_primitive_raised_inside_an_action_raises_to_the_caller() -> None:
    """A-RELEASE response (Evt14) queued by AE-3 runs in Sta6, where Table 9-10 has no cell."""

    async def run() -> None:
        h = make_layer(State.STA5, is_requestor=True)
        h.user.inside_action = h.layer.release_response
        with pytest.raises(InvalidTransition) as info:
            h.layer.event(Event.EVT3, AC)
        assert (info.value.event, info.value.state) == (Event.EVT14, State.STA6)
        assert h.state is State.STA6
        assert h.writer.data == b""
        h.layer._stop_artim()

    asyncio.run(run())


# ------------------------------------------------ invalid events
INVALID_LOCAL = [
    (event, state)
    for event in LOCAL_PRIMITIVES
    for state in State
    if (event, state) not in TRANSITION_TABLE and state is not State.STA1
]


@pytest.mark.parametrize(("event", "state"), INVALID_LOCAL, ids=[f"{e.name}-{s.name}" for e, s in INVALID_LOCAL])
def test_invalid_local_primitive_raises(event: Event, state: State) -> None:
    async def run() -> None:
        h = make_layer(state)
        with pytest.raises(InvalidTransition) as info:
            fire(h, event)
        assert info.value.event is event and info.value.state is state
        assert h.layer.state is state, "an invalid primitive changes nothing"
        assert h.writer.data == b""
        h.layer._stop_artim()

    asyncio.run(run())


def test_empty_cell_message() -> None:
    async def run() -> None:
        h = make_layer(State.STA2)
        with pytest.raises(InvalidTransition, match=r"event EVT9 is not valid in state STA2 \(PS3.8 Table 9-10\)"):
            h.layer.event(Event.EVT9, PDATA)
        h.layer._stop_artim()

    asyncio.run(run())


def test_user_primitives() -> None:
    """PS3.8 Table 9-2: the events a local service-user raises."""
    assert USER_PRIMITIVES == set(LOCAL_PRIMITIVES)


@pytest.mark.parametrize(
    ("method", "state"),
    [("release_request", State.STA2), ("release_request", State.STA7), ("release_response", State.STA6)],
)
def test_invalid_public_primitive_raises(method: str, state: State) -> None:
    async def run() -> None:
        h = make_layer(state)
        with pytest.raises(InvalidTransition):
            getattr(h.layer, method)()
        h.layer._stop_artim()

    asyncio.run(run())


def test_send_pdata_outside_data_transfer_raises() -> None:
    async def run() -> None:
        h = make_layer(State.STA5)
        with pytest.raises(InvalidTransition):
            h.layer.send_pdata(PDATA_BYTES)
        assert h.writer.data == b""
        h.layer._stop_artim()

    asyncio.run(run())


def test_abort_in_sta2_closes_the_transport() -> None:
    """PS3.8 has no A-ABORT request in Sta2 (no association yet); abort() closes instead of raising."""

    async def run() -> None:
        h = make_layer(State.STA2)
        h.layer.abort("server shutting down")
        assert h.writer.closed
        assert not h.artim_running
        assert h.writer.data == b""

    asyncio.run(run())


def test_provider_abort_in_sta6_sends_reason() -> None:
    async def run() -> None:
        h = make_layer(State.STA6)
        h.layer.provider_abort(6, "too long")
        assert h.layer.state is State.STA13
        assert bytes(h.writer.data) == abort_bytes(2, 6)
        assert h.user.calls == ["aborted"]
        assert h.layer.end_reason == "too long"
        h.layer._stop_artim()

    asyncio.run(run())


def test_stray_event_after_close_is_ignored() -> None:
    async def run() -> None:
        h = make_layer(State.STA1)
        h.layer.event(Event.EVT17)
        h.layer.release_request()
        assert h.layer.state is State.STA1
        h.layer._stop_artim()

    asyncio.run(run())
