"""The DICOM upper-layer state machine: PS3.8 §9.2, Table 9-10.

The machine is data: ``TRANSITION_TABLE[(event, state)]`` names an action, and
``ACTIONS[name]`` says what the action does and which state follows. The asyncio
driver in ``dul.py`` performs the effects; this module only knows the rules.
Any (event, state) pair absent from the table is a protocol error; the driver
treats it like Evt19 (PS3.8 §9.2.3: invalid event for the state).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class State(enum.IntEnum):
    """PS3.8 Table 9-1: DICOM upper layer states."""

    STA1 = 1  # Idle
    STA2 = 2  # Transport connection open (awaiting A-ASSOCIATE-RQ PDU)
    STA3 = 3  # Awaiting local A-ASSOCIATE response primitive
    STA4 = 4  # Awaiting transport connection opening to complete
    STA5 = 5  # Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU
    STA6 = 6  # Association established and ready for data transfer
    STA7 = 7  # Awaiting A-RELEASE-RP PDU
    STA8 = 8  # Awaiting local A-RELEASE response primitive
    STA9 = 9  # Release collision requestor side; awaiting A-RELEASE response
    STA10 = 10  # Release collision acceptor side; awaiting A-RELEASE-RP PDU
    STA11 = 11  # Release collision requestor side; awaiting A-RELEASE-RP PDU
    STA12 = 12  # Release collision acceptor side; awaiting A-RELEASE response
    STA13 = 13  # Awaiting Transport Connection Close Indication


class Event(enum.IntEnum):
    """PS3.8 Table 9-2: DICOM upper layer events."""

    EVT1 = 1  # A-ASSOCIATE request (local user)
    EVT2 = 2  # Transport connect confirmation (local transport service)
    EVT3 = 3  # A-ASSOCIATE-AC PDU received
    EVT4 = 4  # A-ASSOCIATE-RJ PDU received
    EVT5 = 5  # Transport connection indication
    EVT6 = 6  # A-ASSOCIATE-RQ PDU received
    EVT7 = 7  # A-ASSOCIATE response primitive (accept)
    EVT8 = 8  # A-ASSOCIATE response primitive (reject)
    EVT9 = 9  # P-DATA request primitive
    EVT10 = 10  # P-DATA-TF PDU received
    EVT11 = 11  # A-RELEASE request primitive
    EVT12 = 12  # A-RELEASE-RQ PDU received
    EVT13 = 13  # A-RELEASE-RP PDU received
    EVT14 = 14  # A-RELEASE response primitive
    EVT15 = 15  # A-ABORT request primitive
    EVT16 = 16  # A-ABORT PDU received
    EVT17 = 17  # Transport connection closed indication
    EVT18 = 18  # ARTIM timer expired
    EVT19 = 19  # Unrecognized or invalid PDU received


@dataclass(frozen=True)
class Action:
    """One action of PS3.8 Tables 9-6 to 9-9.

    ``next_state`` is None when the standard makes it conditional (AE-6: the
    A-ASSOCIATE-RQ is acceptable or not; AR-8: we are requestor or acceptor);
    the driver then passes the condition to :func:`conditional_next_state`.
    """

    name: str
    description: str
    next_state: State | None


S = State
# PS3.8 Tables 9-6 (AE), 9-7 (DT), 9-8 (AR), 9-9 (AA)
ACTIONS: dict[str, Action] = {
    a.name: a
    for a in (
        Action("AE-1", "Issue TRANSPORT CONNECT request primitive to local transport service", S.STA4),
        Action("AE-2", "Send A-ASSOCIATE-RQ PDU", S.STA5),
        Action("AE-3", "Issue A-ASSOCIATE confirmation (accept) primitive", S.STA6),
        Action("AE-4", "Issue A-ASSOCIATE confirmation (reject) primitive and close transport connection", S.STA1),
        Action("AE-5", "Issue Transport connection response primitive; start ARTIM timer", S.STA2),
        Action(
            "AE-6",
            "Stop ARTIM timer; if A-ASSOCIATE-RQ acceptable issue A-ASSOCIATE indication (Sta3), "
            "otherwise send A-ASSOCIATE-RJ PDU and start ARTIM timer (Sta13)",
            None,
        ),
        Action("AE-7", "Send A-ASSOCIATE-AC PDU", S.STA6),
        Action("AE-8", "Send A-ASSOCIATE-RJ PDU and start ARTIM timer", S.STA13),
        Action("DT-1", "Send P-DATA-TF PDU", S.STA6),
        Action("DT-2", "Send P-DATA indication primitive", S.STA6),
        Action("AR-1", "Send A-RELEASE-RQ PDU", S.STA7),
        Action("AR-2", "Issue A-RELEASE indication primitive", S.STA8),
        Action("AR-3", "Issue A-RELEASE confirmation primitive, and close transport connection", S.STA1),
        Action("AR-4", "Issue A-RELEASE-RP PDU and start ARTIM timer", S.STA13),
        Action("AR-5", "Stop ARTIM timer", S.STA1),
        Action("AR-6", "Issue P-DATA indication", S.STA7),
        Action("AR-7", "Issue P-DATA-TF PDU", S.STA8),
        Action(
            "AR-8",
            "Issue A-RELEASE indication (release collision): requestor goes to Sta9, acceptor to Sta10",
            None,
        ),
        Action("AR-9", "Send A-RELEASE-RP PDU", S.STA11),
        Action("AR-10", "Issue A-RELEASE confirmation primitive", S.STA12),
        Action("AA-1", "Send A-ABORT PDU (service-user source) and start (or restart) ARTIM timer", S.STA13),
        Action("AA-2", "Stop ARTIM timer if running; close transport connection", S.STA1),
        Action(
            "AA-3",
            "Issue A-ABORT (service-user) or A-P-ABORT (service-provider) indication and close transport",
            S.STA1,
        ),
        Action("AA-4", "Issue A-P-ABORT indication primitive", S.STA1),
        Action("AA-5", "Stop ARTIM timer", S.STA1),
        Action("AA-6", "Ignore PDU", S.STA13),
        Action("AA-7", "Send A-ABORT PDU", S.STA13),
        Action(
            "AA-8",
            "Send A-ABORT PDU (service-provider source), issue A-P-ABORT indication, and start ARTIM timer",
            S.STA13,
        ),
    )
}


def _row(event: Event, cells: dict[int, str]) -> dict[tuple[Event, State], str]:
    return {(event, State(sta)): action for sta, action in cells.items()}


_ABORT_8 = {3: "AA-8", 5: "AA-8", 6: "AA-8", 7: "AA-8", 8: "AA-8", 9: "AA-8", 10: "AA-8", 11: "AA-8", 12: "AA-8"}

# PS3.8 Table 9-10: DICOM upper layer state transition table.
# Rows are events, columns states; empty cells of the standard are absent here.
TRANSITION_TABLE: dict[tuple[Event, State], str] = {
    **_row(Event.EVT1, {1: "AE-1"}),
    **_row(Event.EVT2, {4: "AE-2"}),
    **_row(Event.EVT3, {2: "AA-1", **_ABORT_8, 5: "AE-3", 13: "AA-6"}),
    **_row(Event.EVT4, {2: "AA-1", **_ABORT_8, 5: "AE-4", 13: "AA-6"}),
    **_row(Event.EVT5, {1: "AE-5"}),
    **_row(Event.EVT6, {2: "AE-6", **_ABORT_8, 13: "AA-7"}),
    **_row(Event.EVT7, {3: "AE-7"}),
    **_row(Event.EVT8, {3: "AE-8"}),
    **_row(Event.EVT9, {6: "DT-1", 8: "AR-7"}),
    **_row(Event.EVT10, {2: "AA-1", **_ABORT_8, 6: "DT-2", 7: "AR-6", 13: "AA-6"}),
    **_row(Event.EVT11, {6: "AR-1"}),
    **_row(Event.EVT12, {2: "AA-1", **_ABORT_8, 6: "AR-2", 7: "AR-8", 13: "AA-6"}),
    **_row(Event.EVT13, {2: "AA-1", **_ABORT_8, 7: "AR-3", 10: "AR-10", 11: "AR-3", 13: "AA-6"}),
    **_row(Event.EVT14, {8: "AR-4", 9: "AR-9", 12: "AR-4"}),
    **_row(Event.EVT15, {3: "AA-1", 4: "AA-2", 5: "AA-1", 6: "AA-1", 7: "AA-1", 8: "AA-1",
                         9: "AA-1", 10: "AA-1", 11: "AA-1", 12: "AA-1"}),
    **_row(Event.EVT16, {2: "AA-2", 3: "AA-3", 5: "AA-3", 6: "AA-3", 7: "AA-3", 8: "AA-3",
                         9: "AA-3", 10: "AA-3", 11: "AA-3", 12: "AA-3", 13: "AA-2"}),
    **_row(Event.EVT17, {2: "AA-5", 3: "AA-4", 4: "AA-4", 5: "AA-4", 6: "AA-4", 7: "AA-4",
                         8: "AA-4", 9: "AA-4", 10: "AA-4", 11: "AA-4", 12: "AA-4", 13: "AR-5"}),
    **_row(Event.EVT18, {2: "AA-2", 13: "AA-2"}),
    **_row(Event.EVT19, {2: "AA-1", **_ABORT_8, 13: "AA-7"}),
}


class InvalidTransition(Exception):
    """An event arrived that PS3.8 Table 9-10 does not allow in the current state."""

    def __init__(self, event: Event, state: State) -> None:
        super().__init__(f"event {event.name} is not valid in state {state.name} (PS3.8 Table 9-10)")
        self.event = event
        self.state = state


def lookup(event: Event, state: State) -> Action:
    """The action PS3.8 Table 9-10 prescribes, or InvalidTransition."""
    try:
        return ACTIONS[TRANSITION_TABLE[(event, state)]]
    except KeyError:
        raise InvalidTransition(event, state) from None


def conditional_next_state(action: Action, *, rq_acceptable: bool = True, is_requestor: bool = False) -> State:
    """Resolve the next state of an action, including AE-6 and AR-8."""
    if action.next_state is not None:
        return action.next_state
    if action.name == "AE-6":
        return State.STA3 if rq_acceptable else State.STA13
    if action.name == "AR-8":
        return State.STA9 if is_requestor else State.STA10
    raise ValueError(f"action {action.name} has no next state")
