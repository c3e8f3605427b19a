"""Query/Retrieve Service Class, C-FIND SCP: PS3.4 Annex C (C.4.1), SCP side.

Patient Root, Study Root and Patient/Study Only (retired) FIND SOP classes. The
identifier is decoded in the negotiated transfer syntax and handed to the one
query engine (core/query.py); every match goes back as a Pending response as
soon as it is found. C-CANCEL ends the query with 0xFE00. Relational queries
are served when the requester asked for them in SOP Class Extended Negotiation
and the association's A-ASSOCIATE-AC agreed (see :meth:`extended_negotiation`).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any, Final, cast

from minipacs.core.audit import Action, ActorKind, patient_query
from minipacs.core.errors import ArchiveError
from minipacs.core.query import (
    ResponseField,
    Row,
    prepare_query,
    response_fields,
    row_dataset,
    run_query_batches,
)
from minipacs.dicom.identifier import (
    SPECIFIC_CHARACTER_SET,
    choose_charset,
    decode_identifier,
    deflate,
    encode_identifier,
    identifier_charset,
    response_charset,
)
from minipacs.dicom.levels import INFORMATION_MODELS, InformationModel
from minipacs.dicom.uids import DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, TransferSyntax, transfer_syntax, uid_name
from minipacs.dicom.values import codecs_for, uses_code_extensions
from minipacs.dicom.vr import ASCII_VRS, CHARSET_VRS, INT_VR_FORMATS, LONG_LENGTH_VRS
from minipacs.index.matching import python_matches
from minipacs.net.association import Association, DatasetSink, Message
from minipacs.net.dimse import Command
from minipacs.net.memory import BytesSink
from minipacs.net.pdu_items import SOPClassExtendedNegotiation
from minipacs.net.presentation import NegotiatedContext, SupportedContext
from minipacs.services.base import Service, record_operation
from minipacs.services.dispatch import Answer, Operation, PendingBatch, Response
from minipacs.services.status import (
    FIND,
    FIND_CANCELLED,
    FIND_LIMIT_REACHED,
    FIND_PENDING,
    FIND_PENDING_WARNING,
    SUCCESS,
    describe,
    error_comment,
    fits_error_comment,
    status_for_find_error,
)
from minipacs.services.verification import UNCOMPRESSED

log = logging.getLogger("minipacs.find")

#: FIND SOP class -> its information model (PS3.4 C.6, dicom/levels.py)
FIND_MODELS: Final[Mapping[str, InformationModel]] = {model.find_sop_class: model for model in INFORMATION_MODELS}
FIND_TRANSFER_SYNTAXES: Final = UNCOMPRESSED | {DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN}
# PS3.4 C.5.1.1 Extended Negotiation (Table C.5-1), byte 1: relational-queries; byte 2: combined
# date-time matching (1 = supported, each); bytes 3 and 4 (fuzzy semantic matching of person names,
# timezone query adjustment) are answered 0: not supported.
RELATIONAL_QUERIES_BYTE: Final = 0
COMBINED_DATE_TIME_BYTE: Final = 1
#: (0008,0054) RetrieveAETitle: answered by the service, not the query engine.
RETRIEVE_AE_TITLE: Final = 0x00080054


@dataclass(frozen=True)
class _Element:
    """How one element of every response of a query is written (PS3.5 §7.1.2)."""

    prefix: bytes  # tag, and VR for explicit VR
    length: struct.Struct  # the value length field
    kind: str  # "ascii", "text" (a character set applies) or "int"
    pad: bytes
    index: int  # position in the query engine's Row; -1: ``constant``; -2: SpecificCharacterSet
    constant: str = ""
    short: bool = False  # explicit VR with a 2-byte length: at most 0xFFFF bytes
    int_format: str = ""  # struct format of one US/UL/SS/SL value
    omit_empty: bool = False  # left out when empty (TimezoneOffsetFromUTC, PS3.4 C.4.1.1.3.2)


#: One element of :meth:`RowEncoder._encode_ascii`: (index in the row, header before the length,
#: header and zero length (b"" when an empty value is left out), the length field, padding,
#: 2-byte length, int format or "" for text).
_AsciiStep = tuple[int, bytes, bytes, struct.Struct, bytes, bool, str]


class RowEncoder:
    """Response identifiers straight from the query engine's rows, without building Datasets.

    The layout of every response of one query is the same, so tags, VRs and
    headers are worked out once; per match only the values are encoded. Rows
    that need more than text and US/UL values (stored-file elements, sequences,
    binary values, ISO 2022 character sets) go through pydicom instead.
    """

    def __init__(
        self,
        fields: Sequence[ResponseField],
        ts: TransferSyntax,
        request_charset: str,
        constants: Mapping[int, tuple[str, str]],
    ) -> None:
        """``constants``: tag -> (VR, value) answered the same in every response (RetrieveAETitle)."""
        self.fields = tuple(fields)
        self.ts = ts
        self.request_charset = request_charset
        self.constants = dict(constants)
        order = "<" if ts.little_endian else ">"
        layout: dict[int, tuple[str, int, str]] = {f.tag: (f.vr, i, "") for i, f in enumerate(fields)}
        omitted = {f.tag for f in fields if f.omit_empty}
        for tag, (vr, value) in constants.items():
            layout[tag] = (vr, -1, value)
        layout[SPECIFIC_CHARACTER_SET] = ("CS", -2, "")
        self.flat = all(vr in INT_VR_FORMATS or vr in ASCII_VRS or vr in CHARSET_VRS for vr, _i, _c in layout.values())
        self.text_indexes = tuple(i for i, f in enumerate(fields) if f.vr in CHARSET_VRS and f.tag not in constants)
        self.elements: list[_Element] = []
        for tag in sorted(layout):
            vr, index, constant = layout[tag]
            head = struct.pack(f"{order}HH", tag >> 16, tag & 0xFFFF)
            if ts.implicit_vr:
                prefix, length, short = head, struct.Struct(f"{order}L"), False
            elif vr in LONG_LENGTH_VRS:
                prefix, length, short = head + vr.encode() + b"\0\0", struct.Struct(f"{order}L"), False
            else:
                prefix, length, short = head + vr.encode(), struct.Struct(f"{order}H"), True
            kind = "int" if vr in INT_VR_FORMATS else "ascii" if vr in ASCII_VRS else "text"
            self.elements.append(
                _Element(
                    prefix,
                    length,
                    kind,
                    b"\0" if vr == "UI" else b" ",
                    index,
                    constant,
                    short,
                    f"{order}{INT_VR_FORMATS.get(vr, '')}",
                    tag in omitted,
                )
            )
        self._ascii_extra, self._ascii_plan = self._plan_ascii()

    def _plan_ascii(self) -> tuple[tuple[str, ...], tuple[_AsciiStep, ...] | None]:
        """The steps of :meth:`_encode_ascii`: (values appended to every row, one step per element),
        or no plan when the requester's character set rules it out (ISO 2022 code extensions,
        which pydicom writes; a term that is not ASCII)."""
        charset = self.request_charset
        if not self.flat or "\\" in charset or not charset.isascii():
            return (), None
        width = len(self.fields)
        extra: list[str] = []
        steps: list[_AsciiStep] = []
        for element in self.elements:
            if element.index >= 0:
                index = element.index
            elif element.index == -1 or charset:
                index = width + len(extra)
                extra.append(element.constant if element.index == -1 else charset)
            else:
                continue  # no SpecificCharacterSet: every value is ASCII, the default repertoire
            steps.append(
                (
                    index,
                    element.prefix,
                    b"" if element.omit_empty else element.prefix + element.length.pack(0),
                    element.length,
                    element.pad,
                    element.short,
                    element.int_format if element.kind == "int" else "",
                )
            )
        return tuple(extra), tuple(steps)

    def encode_many(self, rows: Sequence[Row]) -> list[bytes]:
        """:meth:`encode` of each row: the rows whose values are all ASCII text (nearly every
        match) in one tight loop, the others as :meth:`encode` does."""
        if self._ascii_plan is None:
            return [self.encode(row) for row in rows]
        out: list[bytes] = []
        for row in rows:
            data = self._encode_ascii(row)
            if data is None:
                out.append(self.encode(row))
            else:
                out.append(deflate(data) if self.ts.deflated else data)
        return out

    def _encode_ascii(self, row: Row) -> bytes | None:
        """The identifier of a row whose values are all ASCII text or empty, else None. The
        response then keeps the requester's character set (PS3.4 C.4.1.1.3.2: it can carry
        ASCII), and ASCII text is the same bytes in every single-byte or UTF-8 repertoire."""
        values = row + self._ascii_extra
        out: list[bytes] = []
        append = out.append
        for index, prefix, empty, length, pad, short, int_format in cast(tuple[_AsciiStep, ...], self._ascii_plan):
            value = values[index]
            if value is None:
                append(empty)
                continue
            if type(value) is not str or not value.isascii():
                return None
            if int_format:
                try:
                    raw = struct.pack(int_format, int(value)) if value else b""
                except (ValueError, struct.error):
                    raw = b""
            else:
                raw = value.encode()
                if len(raw) & 1:
                    raw += pad
                if short and len(raw) > 0xFFFF:
                    return None
            append(prefix)
            append(length.pack(len(raw)))
            append(raw)
        return b"".join(out)

    def encode(self, row: Row) -> bytes:
        """The response identifier of ``row`` in the context's transfer syntax (deflated if negotiated)."""
        data = self._encode_fast(row) if self.flat else None
        if data is None:
            ds = row_dataset(self.fields, row)
            for tag, (vr, value) in self.constants.items():
                ds.add_new(tag, vr, value)
            charset = response_charset(self.request_charset, ds)
            if charset:
                ds.SpecificCharacterSet = charset
            return encode_identifier(ds, self.ts)
        return deflate(data) if self.ts.deflated else data

    def _charset(self, row: Row) -> str:
        """PS3.4 C.4.1.1.3.2, as :func:`response_charset` decides it for a Dataset."""
        return choose_charset(self.request_charset, (v for i in self.text_indexes if isinstance(v := row[i], str)))

    def _encode_fast(self, row: Row) -> bytes | None:
        for value in row:
            if value is not None and type(value) is not str:
                return None  # an element of the stored file: pydicom writes it
        charset = self._charset(row)
        if uses_code_extensions(charset):
            return None  # ISO 2022 escape sequences, even under one Defined Term: encode_identifier writes them
        codec = codecs_for(charset)[0]
        out: list[bytes] = []
        for element in self.elements:
            index = element.index
            if index >= 0:
                value = row[index]
            elif index == -1:
                value = element.constant
            elif charset:
                value = charset
            else:
                continue
            if element.kind == "int":
                try:
                    raw = struct.pack(element.int_format, int(cast(str, value))) if value else b""
                except (ValueError, struct.error):
                    raw = b""
            elif value is None:
                if element.omit_empty:
                    continue
                raw = b""
            else:
                try:
                    raw = cast(str, value).encode("ascii" if element.kind == "ascii" else codec)
                except (UnicodeEncodeError, LookupError):
                    return None
                if len(raw) & 1:
                    raw += element.pad
                if element.short and len(raw) > 0xFFFF:
                    return None
            out.append(element.prefix)
            out.append(element.length.pack(len(raw)))
            out.append(raw)
        return b"".join(out)


Respond = Callable[..., Awaitable[None]]


def find_failure(assoc: Association, exc: Exception, what: str) -> tuple[int, str | Exception]:
    """The status and the reason (its sentence, or the refusal itself: ``status.error_comment``
    makes the Error Comment of it) for a C-FIND that raised (PS3.4 C.4.1.1.4)."""
    if isinstance(exc, ValueError):
        return 0xC000, exc
    if isinstance(exc, ArchiveError):
        return status_for_find_error(exc), exc
    log.exception("%s %s failed", assoc.label, what)
    return 0xC000, f"internal error: {type(exc).__name__}"


def refusal_comment(status: int, reason: str | BaseException) -> str:
    """The Error Comment of a refusal by the archive (an ArchiveError): its leading "; "-separated clauses
    when they fit the LO's 64 characters, as they name the key at fault ("StudyDate '2020' is not a
    valid DA value or range"), before the sentence of its kind, which does not ("A key value cannot be
    matched; correct it and ask again"); else :func:`status.error_comment`. The log keeps the whole."""
    if isinstance(reason, ArchiveError):
        text = str(reason)
        clauses = text.split("; ")
        for n in range(len(clauses), 0, -1):
            head = "; ".join(clauses[:n])
            if fits_error_comment(head):
                return head
    return error_comment(status, reason)


def finish_find(
    assoc: Association, status: int, text: str | Exception, *, what: str, sop_class: str, level: str, matches: int
) -> Response:
    """The end of every C-FIND (Q/R and worklist): log a refusal, record the operation, and
    the final response for the dispatcher to send."""
    final = status in (SUCCESS, FIND_CANCELLED)
    if not final:
        log.warning("%s %s refused with %s: %s", assoc.label, what, describe(status, FIND), text)
    outcome = {SUCCESS: "success", FIND_CANCELLED: "cancelled"}.get(status, "failed")
    record_operation(
        assoc,
        op="C-FIND",
        sop_class=sop_class,
        level=level,
        matches=matches,
        status=status,
        outcome=outcome,
        error=str(text),
    )
    return Response(status, error="" if final else refusal_comment(status, text))


class QueryRetrieveFindSCP(Service):
    name = "query/retrieve find"

    def __init__(self, archive: Any, *, max_results: int | None = None, ae_title: str = "") -> None:
        """``max_results``: most matches one C-FIND returns (None: no limit); past it the query
        ends with 0xA700 and a comment saying so. ``ae_title`` answers RetrieveAETitle."""
        self.archive = archive
        self.max_results = max_results
        self.ae_title = ae_title

    def supported_contexts(self) -> Mapping[str, SupportedContext]:
        return {uid: SupportedContext(uid, frozenset(FIND_TRANSFER_SYNTAXES)) for uid in FIND_MODELS}

    def handlers(self) -> Mapping[str, Operation]:
        return {"C-FIND-RQ": Operation(self.c_find, access="find")}

    def sink_for(self, assoc: Association, context: NegotiatedContext, command: Command) -> DatasetSink | None:
        return None

    def extended_negotiation(
        self, proposed: Sequence[SOPClassExtendedNegotiation]
    ) -> list[SOPClassExtendedNegotiation]:
        """Our A-ASSOCIATE-AC answers to SOP Class Extended Negotiation (PS3.4 C.5.1.1): relational
        queries and combined date-time matching yes, when asked for; fuzzy semantic matching of person
        names and timezone query adjustment no (0). One byte answered per byte proposed (at most four)."""
        replies = []
        for item in proposed:
            if item.sop_class_uid in FIND_MODELS and item.info:
                asked = item.info[:4]
                agreed = bytes(
                    1 if index in (RELATIONAL_QUERIES_BYTE, COMBINED_DATE_TIME_BYTE) and value == 1 else 0
                    for index, value in enumerate(asked)
                )
                replies.append(SOPClassExtendedNegotiation(item.sop_class_uid, agreed))
        return replies

    @staticmethod
    def agreed(assoc: Association, sop_class_uid: str, byte: int) -> bool:
        """Whether the A-ASSOCIATE-AC of ``assoc`` agreed to option ``byte`` (C.5.1.1) for the class."""
        if assoc.ac is None:
            return False
        return any(
            item.sop_class_uid == sop_class_uid and item.info[byte : byte + 1] == b"\x01"
            for item in assoc.ac.user_information.extended
        )

    @classmethod
    def relational_agreed(cls, assoc: Association, sop_class_uid: str) -> bool:
        """Whether the A-ASSOCIATE-AC of ``assoc`` agreed to relational queries for the class."""
        return cls.agreed(assoc, sop_class_uid, RELATIONAL_QUERIES_BYTE)

    async def c_find(self, assoc: Association, message: Message) -> AsyncGenerator[Answer, None]:
        """PS3.4 C.4.1.3: the matches as Pending responses (in batches), then the final status."""
        cmd = message.command
        context = message.context
        sop_class = cmd.affected_sop_class_uid
        matches = 0
        status = SUCCESS
        text: str | Exception = ""
        level = ""
        model = FIND_MODELS.get(context.abstract_syntax)
        ts = transfer_syntax(context.transfer_syntax)
        sink = message.dataset
        try:
            if message.dataset_error is not None:
                status, text = 0xC000, f"the identifier could not be received: {message.dataset_error}"
            elif model is None or ts is None or sop_class != context.abstract_syntax:
                status, text = (
                    0xA900,
                    (
                        f"C-FIND for {uid_name(sop_class)} on a context negotiated for "
                        f"{uid_name(context.abstract_syntax)}"
                    ),
                )
            elif not isinstance(sink, BytesSink):
                status, text = 0xC000, "C-FIND request without an identifier"
            else:
                identifier = decode_identifier(sink.getvalue(), context.transfer_syntax)
                relational = self.relational_agreed(assoc, sop_class)
                combined = self.agreed(assoc, sop_class, COMBINED_DATE_TIME_BYTE)
                prepared = prepare_query(identifier, model, relational=relational, combined_date_time=combined)
                level = prepared.level.value
                asked = patient_query(
                    {k.keyword: k.text for k in prepared.keys if k.keyword and not k.items}, level=level
                )
                if asked is not None:
                    self.archive.audit.record(
                        Action.QUERIED,
                        actor_kind=ActorKind.DICOM,
                        actor=assoc.calling_ae,
                        address=assoc.peer_host,
                        patient_id=asked[0],
                        detail=f"C-FIND {level}: {asked[1]}",
                    )
                request_charset = identifier_charset(identifier)
                pending = FIND_PENDING_WARNING if prepared.unsupported else FIND_PENDING
                if prepared.unsupported:
                    log.info(
                        "%s C-FIND: matching on %s is not supported; they are answered, not matched",
                        assoc.label,
                        ", ".join(prepared.unsupported),
                    )
                retrieve_ae = self.ae_title or assoc.local_ae
                aet_key = next((k for k in prepared.keys if k.keyword == "RetrieveAETitle"), None)
                constants = {RETRIEVE_AE_TITLE: ("AE", retrieve_ae)} if aet_key is not None else {}
                if aet_key is not None and not python_matches(aet_key.condition, "AE", retrieve_ae):
                    # PS3.4 C.2.2.2: every match is retrieved from us, so RetrieveAETitle=OTHER matches nothing
                    # (it answered everything, each match saying our title)
                    prepared = replace(prepared, matches_nothing=True)
                encoder = RowEncoder(response_fields(prepared), ts, request_charset, constants)
                limit = None if self.max_results is None else self.max_results + 1
                async with aclosing(run_query_batches(self.archive, prepared, limit=limit)) as batches:
                    async for rows in batches:
                        if message.cancelled.is_set():
                            break
                        over = self.max_results is not None and matches + len(rows) > self.max_results
                        if over:
                            rows = rows[: cast(int, self.max_results) - matches]
                        if rows:
                            yield PendingBatch(pending, encoder.encode_many(rows))
                            matches += len(rows)
                        if over:
                            status = FIND_LIMIT_REACHED
                            # an Error Comment within 64 characters for any max_results (PS3.5 LO)
                            text = f"over {self.max_results} matches (max_results); narrow the query"
                            break
                        await asyncio.sleep(0)  # let the reader see a C-CANCEL (drain may not yield)
                if message.cancelled.is_set():
                    status = FIND_CANCELLED
        except Exception as exc:  # noqa: BLE001 - the query's own failures get their C-FIND status
            status, text = find_failure(assoc, exc, "C-FIND")
        yield finish_find(assoc, status, text, what="C-FIND", sop_class=sop_class, level=level, matches=matches)
        log.info(
            "%s C-FIND %s %s: %d match(es), %s",
            assoc.label,
            FIND_MODELS[sop_class].name if sop_class in FIND_MODELS else sop_class,
            level or "?",
            matches,
            describe(status, FIND),
        )


__all__ = [
    "FIND_MODELS",
    "QueryRetrieveFindSCP",
    "RowEncoder",
    "refusal_comment",
    "decode_identifier",
    "encode_identifier",
    "response_charset",
]
