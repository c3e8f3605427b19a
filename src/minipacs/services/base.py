"""The contract between the DICOM server and the service classes (PS3.4)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from minipacs.net.association import Association, DatasetSink
from minipacs.net.dimse import Command
from minipacs.net.presentation import NegotiatedContext, SupportedContext

if TYPE_CHECKING:
    from minipacs.services.dispatch import Operation


class ServiceClass(Protocol):
    """A PS3.4 service class as the SCP side of the server sees it."""

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


def record_operation(assoc: Association, **fields: object) -> None:
    """Append one operation to the association log entry (bounded)."""
    ops = assoc.operations
    if len(ops) < MAX_LOGGED_OPERATIONS:
        ops.append(fields)
    counts = assoc.info.setdefault("operation_counts", {})
    if isinstance(counts, dict):
        key = f"{fields.get('op', '?')} {fields.get('outcome', '')}".strip()
        counts[key] = counts.get(key, 0) + 1


#: Operations beyond this many per association are counted, not listed.
MAX_LOGGED_OPERATIONS = 2000
