"""The DICOM upper-layer state machine's vocabulary: PS3.8 §9.2.

States (PS3.8 Table 9-1) and events (Table 9-2). The transition table itself,
PS3.8 Table 9-10, is ``minipacs.net.dul.TRANSITION_TABLE``: its cells are the
action methods of :class:`~minipacs.net.dul.UpperLayer` (PS3.8 Tables 9-6 to
9-9), so it lives beside them. Any (event, state) pair absent from the table is
a protocol error; the driver treats it like Evt19 (PS3.8 §9.2.3: invalid event
for the state), except for a local primitive, which raises
:class:`InvalidTransition` to the caller that asked for it.
"""

from __future__ import annotations

import enum


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


#: The events that are requests or responses of the local service-user (PS3.8
#: Table 9-2). One the table does not allow is the caller's mistake, not the peer's.
USER_PRIMITIVES: frozenset[Event] = frozenset(
    {Event.EVT1, Event.EVT7, Event.EVT8, Event.EVT9, Event.EVT11, Event.EVT14, Event.EVT15}
)


class InvalidTransition(Exception):
    """An event arrived that PS3.8 Table 9-10 does not allow in the current state."""

    def __init__(self, event: Event, state: State) -> None:
        super().__init__(f"event {event.name} is not valid in state {state.name} (PS3.8 Table 9-10)")
        self.event = event
        self.state = state
