"""The contract between the DICOM server and the service classes (PS3.4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from minipacs.net.association import Association, DatasetSink
from minipacs.net.dimse import Command
from minipacs.net.pdu_items import SOPClassExtendedNegotiation
from minipacs.net.presentation import NegotiatedContext, SupportedContext

if TYPE_CHECKING:
    from minipacs.services.dispatch import Operation


@runtime_checkable
class ServiceClass(Protocol):
    """A PS3.4 service class as the SCP side of the server sees it (inherit :class:`Service` for the defaults)."""

    name: str

    def supported_contexts(self) -> Mapping[str, SupportedContext]:
        """Abstract syntax -> what we accept for it."""
        ...

    def handlers(self) -> Mapping[str, Operation]:
        """DIMSE request name (e.g. 'C-STORE-RQ') -> its handler and access rule (services/dispatch.py)."""
        ...

    def sink_for(self, assoc: Association, context: NegotiatedContext, command: Command) -> DatasetSink | None:
        """Where the dataset of ``command`` goes; None to keep it in memory."""
        ...

    def extended_negotiation(
        self, proposed: Sequence[SOPClassExtendedNegotiation]
    ) -> list[SOPClassExtendedNegotiation]:
        """PS3.7 D.3.3.5: our A-ASSOCIATE-AC answers to the SOP Class Extended Negotiation items
        proposed for this service's SOP classes (an item we do not answer is not agreed)."""
        ...


class UnknownSOPClasses(ServiceClass, Protocol):
    """A service that may also take a proposed abstract syntax no service lists (services/storage.py,
    ``accept_unknown_sop_classes``): the server answers such a context with :meth:`unknown_context` and
    hands its requests and data sets to this service."""

    def unknown_context(self, abstract_syntax: str) -> SupportedContext | None:
        """What we accept for ``abstract_syntax``; None: refused (abstract syntax not supported)."""
        ...


class Service:
    """The defaults of a :class:`ServiceClass`: datasets kept in memory, no extended negotiation."""

    name = "service"

    def sink_for(self, assoc: Association, context: NegotiatedContext, command: Command) -> DatasetSink | None:
        return None

    def extended_negotiation(
        self, proposed: Sequence[SOPClassExtendedNegotiation]
    ) -> list[SOPClassExtendedNegotiation]:
        return []


def record_operation(assoc: Association, **fields: object) -> None:
    """Append one operation to the association log entry (bounded)."""
    ops = assoc.operations
    if len(ops) < MAX_LOGGED_OPERATIONS:
        ops.append(fields)
    assoc.operation_counts[f"{fields.get('op', '?')} {fields.get('outcome', '')}".strip()] += 1


#: Operations beyond this many per association are counted, not listed.
MAX_LOGGED_OPERATIONS = 2000
