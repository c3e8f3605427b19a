"""DICOM TLS: PS3.15 Annex B.1, The Basic TLS Secure Transport Connection Profile.

TLS 1.2 at least (BCP 195, as PS3.15 B.1 and its successors ask); the registered
port is 2762 (``dicom-tls``). Peers are authenticated by certificates chaining to
a CA file we are given; host names are not checked (DICOM nodes are registered by
address, and their certificates rarely name it), the chain is. This module builds
the :class:`ssl.SSLContext` of each side and says in plain words why a handshake
failed -- OpenSSL's reason codes are not something a person should have to decode.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

log = logging.getLogger("minipacs.net")

#: PS3.15 B.1 / IANA: dicom-tls.
DICOM_TLS_PORT: Final = 2762


class TLSConfigError(ValueError):
    """A certificate, key or CA file cannot be used; the message says which and why."""


def _load_chain(ctx: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    try:
        ctx.load_cert_chain(cert_file, key_file or None)
    except FileNotFoundError as exc:
        raise TLSConfigError(f"TLS certificate or key file not found: {exc.filename or cert_file}") from exc
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(
            f"cannot use TLS certificate {cert_file} with key {key_file or cert_file}: "
            f"{getattr(exc, 'reason', None) or exc} (are both PEM, unencrypted, and a pair?)"
        ) from exc


def _load_ca(ctx: ssl.SSLContext, ca_file: str) -> None:
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except FileNotFoundError as exc:
        raise TLSConfigError(f"TLS CA file not found: {ca_file}") from exc
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(
            f"cannot read the TLS CA file {ca_file}: {getattr(exc, 'reason', None) or exc} (PEM certificates expected)"
        ) from exc


_CRL_BEGIN: Final = b"-----BEGIN X509 CRL-----"
_CRL_END: Final = b"-----END X509 CRL-----"


@dataclass(frozen=True)
class CrlInfo:
    """What we read of one CRL of a ``tls_crl_file`` (RFC 5280 5.1): its place in the file and dates."""

    number: int  # 1-based, in file order
    this_update: dt.datetime
    next_update: dt.datetime | None  # RFC 5280 5.1.2.5: optional in the syntax, required of CAs


def _der_item(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the DER item at ``at`` (X.690 8.1; definite lengths)."""
    if at + 2 > len(data):
        raise ValueError("truncated")
    tag, first = data[at], data[at + 1]
    at += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4 or at + count > len(data):
            raise ValueError("bad length")
        length = int.from_bytes(data[at : at + count], "big")
        at += count
    if at + length > len(data):
        raise ValueError("truncated")
    return tag, at, at + length


def _der_time(tag: int, value: bytes) -> dt.datetime:
    """UTCTime (0x17, YYMMDDHHMMSSZ) or GeneralizedTime (0x18, YYYYMMDDHHMMSSZ), as RFC 5280 4.1.2.5 writes them."""
    text = value.decode("ascii")
    if tag == 0x17:
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"  # RFC 5280 4.1.2.5.1
    elif tag != 0x18:
        raise ValueError("not a time")
    return dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)


def _crl_dates(der: bytes) -> tuple[dt.datetime, dt.datetime | None]:
    """(thisUpdate, nextUpdate) of a DER CertificateList (RFC 5280 5.1: TBSCertList = version OPTIONAL,
    signature, issuer, thisUpdate, nextUpdate OPTIONAL, ...)."""
    _, start, _ = _der_item(der, 0)  # CertificateList
    tag, at, end = _der_item(der, start)  # tbsCertList
    if tag != 0x30:
        raise ValueError("no TBSCertList")
    tag, _, item_end = _der_item(der, at)
    if tag == 0x02:  # version
        at = item_end
    for _ in range(2):  # signature AlgorithmIdentifier, issuer Name
        _, _, at = _der_item(der, at)
    tag, value_start, at = _der_item(der, at)
    this_update = _der_time(tag, der[value_start:at])
    if at < end:
        tag, value_start, value_end = _der_item(der, at)
        if tag in (0x17, 0x18):
            return this_update, _der_time(tag, der[value_start:value_end])
    return this_update, None


def read_crl_file(path: str) -> list[CrlInfo]:
    """The CRLs of a PEM file, in order; TLSConfigError if it cannot be read or holds none."""
    try:
        with open(path, "rb") as fp:
            text = fp.read(64 * 1024 * 1024 + 1)
    except FileNotFoundError as exc:
        raise TLSConfigError(f"TLS CRL file not found: {path}") from exc
    except OSError as exc:
        raise TLSConfigError(f"cannot read the TLS CRL file {path}: {exc.strerror or exc}") from exc
    if len(text) > 64 * 1024 * 1024:
        raise TLSConfigError(f"the TLS CRL file {path} is larger than 64 MiB")
    found: list[CrlInfo] = []
    at = 0
    while (begin := text.find(_CRL_BEGIN, at)) >= 0:
        end = text.find(_CRL_END, begin)
        if end < 0:
            raise TLSConfigError(f"the TLS CRL file {path}: CRL {len(found) + 1} has no END line")
        try:
            der = base64.b64decode(b"".join(text[begin + len(_CRL_BEGIN) : end].split()), validate=True)
            this_update, next_update = _crl_dates(der)
        except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
            raise TLSConfigError(f"the TLS CRL file {path}: CRL {len(found) + 1} is not a DER CRL ({exc})") from exc
        found.append(CrlInfo(len(found) + 1, this_update, next_update))
        at = end + len(_CRL_END)
    if not found:
        raise TLSConfigError(f"the TLS CRL file {path} holds no PEM CRL (-----BEGIN X509 CRL-----)")
    return found


def _load_crl(ctx: ssl.SSLContext, crl_file: str) -> list[CrlInfo]:
    """Check peers' certificates against the CRLs of ``crl_file`` (RFC 5280 6.3): the certificate a peer
    presents must not be revoked, and the CA that issued it must have a CRL in the file."""
    crls = read_crl_file(crl_file)
    try:
        ctx.load_verify_locations(cafile=crl_file)
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"cannot load the TLS CRL file {crl_file}: {getattr(exc, 'reason', None) or exc}") from exc
    if ctx.cert_store_stats().get("crl", 0) < len(crls):
        raise TLSConfigError(f"the TLS CRL file {crl_file}: OpenSSL took fewer CRLs than the {len(crls)} it holds")
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return crls


def crl_warnings(
    crls: list[CrlInfo], crl_file: str, now: dt.datetime | None = None, soon: dt.timedelta = dt.timedelta(0)
) -> list[str]:
    """Sentences about CRLs that are out of date (every certificate their CA issued is then refused),
    or due within ``soon`` (the doctor warns a day ahead)."""
    now = now or dt.datetime.now(dt.UTC)
    words: list[str] = []
    for crl in crls:
        if crl.next_update is None:
            continue
        if crl.next_update <= now:
            words.append(
                f"CRL {crl.number} of {crl_file} is out of date (its nextUpdate {crl.next_update:%Y-%m-%d %H:%M} "
                "UTC has passed): every certificate of its CA is refused until a newer CRL replaces it"
            )
        elif crl.next_update - now < soon:
            hours = (crl.next_update - now).total_seconds() / 3600
            words.append(
                f"CRL {crl.number} of {crl_file} is due in {hours:.0f} hour(s) (nextUpdate "
                f"{crl.next_update:%Y-%m-%d %H:%M} UTC): after that every certificate of its CA is refused"
            )
    return words


class ReloadingContext:
    """An SSLContext whose CRL file is read again when it changes (a CA publishes a new CRL every few
    days, and a revoked modality must be refused without a restart). :meth:`current` looks at the
    file's size and times at most once per ``interval`` seconds; a file that cannot be read or used
    keeps the CRLs in force and is logged once per change."""

    def __init__(self, build: Callable[[], tuple[ssl.SSLContext, list[CrlInfo]]], crl_file: str, interval: float = 1.0):
        self._build = build
        self.crl_file = crl_file
        self._interval = interval
        self._lock = threading.Lock()
        self._context, crls = build()
        self._seen = self._stamp()
        self._looked = time.monotonic()
        for words in crl_warnings(crls, crl_file):
            log.warning("%s", words)

    def _stamp(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.crl_file)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    @property
    def verify_mode(self) -> ssl.VerifyMode:
        return self._context.verify_mode

    def due(self) -> bool:
        """Whether :meth:`current` would look at the file now (else it returns at once, touching no file)."""
        return time.monotonic() - self._looked >= self._interval

    def current(self) -> ssl.SSLContext:
        """The context to use now: rebuilt first if the CRL file changed since it was last read."""
        now = time.monotonic()
        if now - self._looked < self._interval:
            return self._context
        with self._lock:
            self._looked = now
            stamp = self._stamp()
            if stamp == self._seen:
                return self._context
            self._seen = stamp
            try:
                self._context, crls = self._build()
            except TLSConfigError as exc:
                log.error("%s; the CRLs read before stay in force", exc)
                return self._context
            log.info("TLS CRL file %s read again: %d CRL(s)", self.crl_file, len(crls))
            for words in crl_warnings(crls, self.crl_file):
                log.warning("%s", words)
            return self._context


#: What the listener and the association settings hold: a context, or one that follows a CRL file.
TLSContext = ssl.SSLContext | ReloadingContext


def current_context(context: TLSContext) -> ssl.SSLContext:
    """The SSLContext to use for a new connection now."""
    return context.current() if isinstance(context, ReloadingContext) else context


async def current_context_async(context: TLSContext) -> ssl.SSLContext:
    """:func:`current_context` on the event loop: the look at the CRL file, and the rebuild when it
    changed (certificate, CA and CRL files read again), run in a worker thread, never on the loop."""
    if isinstance(context, ReloadingContext) and context.due():
        return await asyncio.to_thread(context.current)
    return current_context(context)


def _base(purpose: ssl.Purpose) -> ssl.SSLContext:
    ctx = ssl.create_default_context(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def server_context(
    cert_file: str, key_file: str, ca_file: str = "", require_client_cert: bool = False, crl_file: str = ""
) -> TLSContext:
    """The listener's side: our certificate; with ``require_client_cert`` every client must present one
    chaining to ``ca_file`` (without it a client certificate is still checked when one is sent); with
    ``crl_file`` a client certificate must not be revoked (the file is followed: :class:`ReloadingContext`)."""
    if not cert_file:
        raise TLSConfigError("the TLS listener needs a certificate (tls_cert_file) and its key (tls_key_file)")
    if require_client_cert and not ca_file:
        raise TLSConfigError("tls_require_client_cert needs tls_ca_file: the CA that signs the clients' certificates")
    _crl_needs_ca(crl_file, ca_file)

    def build() -> tuple[ssl.SSLContext, list[CrlInfo]]:
        ctx = _base(ssl.Purpose.CLIENT_AUTH)
        _load_chain(ctx, cert_file, key_file)
        crls: list[CrlInfo] = []
        if ca_file:
            _load_ca(ctx, ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
            if crl_file:
                crls = _load_crl(ctx, crl_file)
        return ctx, crls

    return ReloadingContext(build, crl_file) if crl_file else build()[0]


def client_context(ca_file: str, cert_file: str = "", key_file: str = "", crl_file: str = "") -> TLSContext:
    """Our side when we call a TLS node: its certificate must chain to ``ca_file`` (and, with
    ``crl_file``, not be revoked); we present ``cert_file`` when given (peers that require client
    certificates)."""
    if not ca_file:
        raise TLSConfigError("calling a TLS node needs tls_ca_file: the CA that signs the nodes' certificates")

    def build() -> tuple[ssl.SSLContext, list[CrlInfo]]:
        ctx = _base(ssl.Purpose.SERVER_AUTH)
        ctx.check_hostname = False  # the chain is verified; DICOM nodes are known by address, see above
        ctx.verify_mode = ssl.CERT_REQUIRED
        _load_ca(ctx, ca_file)
        if cert_file:
            _load_chain(ctx, cert_file, key_file)
        return ctx, _load_crl(ctx, crl_file) if crl_file else []

    return ReloadingContext(build, crl_file) if crl_file else build()[0]


def _crl_needs_ca(crl_file: str, ca_file: str) -> None:
    if crl_file and not ca_file:
        raise TLSConfigError("tls_crl_file needs tls_ca_file: revocation is checked for certificates of those CAs")


@dataclass(frozen=True)
class TLSInfo:
    """What the association log keeps about a TLS connection."""

    version: str  # "TLSv1.3"
    cipher: str
    peer_subject: str  # RFC 4514-like "CN=ct01,O=Hospital"; "" without a peer certificate


def tls_info(ssl_object: Any) -> TLSInfo | None:
    """The TLS parameters of a connection (``get_extra_info("ssl_object")``), None for plain TCP."""
    if ssl_object is None:
        return None
    try:
        cert = ssl_object.getpeercert()
    except ValueError:  # "handshake not done yet": the peer's alert has just reset the connection
        cert = None
    cipher = ssl_object.cipher()
    return TLSInfo(ssl_object.version() or "", cipher[0] if cipher else "", subject_of(cert))


# X.509 attribute names as getpeercert() spells them -> RFC 4514 short names.
SUBJECT_KEYS: Final[dict[str, str]] = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "emailAddress": "E",
}


def subject_of(cert: Any) -> str:
    """``getpeercert()`` -> "CN=...,O=...", most specific first; "" when there is none."""
    if not cert:
        return ""
    parts = [f"{SUBJECT_KEYS.get(key, key)}={value}" for rdn in cert.get("subject", ()) for key, value in rdn]
    return ",".join(reversed(parts))


# OpenSSL reason code -> what happened, in words (seen from the side that logs it).
HANDSHAKE_REASONS: Final[dict[str, str]] = {
    "CERTIFICATE_VERIFY_FAILED": "certificate unknown: its certificate does not chain to our CA file",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no certificate presented, and we require one (tls_require_client_cert)",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer requires a client certificate and we sent none",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust our certificate (unknown CA)",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the peer did not accept our certificate (certificate unknown)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer did not accept our certificate (bad certificate)",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "the peer says our certificate is revoked (its CA's CRL lists it)",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the peer refused the handshake (no common cipher or version?)",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version in common (we need TLS 1.2 or later)",
    "UNSUPPORTED_PROTOCOL": "the peer offered only TLS versions older than 1.2",
    "NO_SHARED_CIPHER": "no cipher suite in common",
    "WRONG_VERSION_NUMBER": "the peer did not speak TLS (plain DICOM on the TLS port?)",
    "HTTP_REQUEST": "the peer spoke HTTP, not TLS",
    "UNEXPECTED_EOF_WHILE_READING": "the connection was closed during the TLS handshake",
    "RECORD_LAYER_FAILURE": "the peer did not speak TLS",
    "PACKET_LENGTH_TOO_LONG": "the peer did not speak TLS (plain DICOM on the TLS port?)",
}


# OpenSSL's verify messages about revocation (X509_V_ERR_*) -> what to do about them.
REVOCATION_WORDS: Final[dict[str, str]] = {
    "certificate revoked": "certificate revoked: its CA's CRL (tls_crl_file) lists it",
    "CRL has expired": "our CRL of its CA is out of date (nextUpdate passed): put the CA's newer CRL in tls_crl_file",
    "unable to get certificate CRL": "tls_crl_file holds no CRL of the CA that issued its certificate",
    "CRL is not yet valid": "our CRL of its CA is not valid yet (thisUpdate in the future: a wrong clock?)",
    "CRL signature failure": "the CRL of its CA in tls_crl_file is not signed by that CA",
}


def describe_tls_error(exc: BaseException) -> str:
    """An exception from a TLS handshake (or read) in plain words."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or "verification failed"
        return REVOCATION_WORDS.get(detail) or f"certificate unknown: {detail}"
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or "")
        words = HANDSHAKE_REASONS.get(reason)
        if words is not None:
            return f"{words} [{reason}]"
        return f"TLS error {reason or exc}"
    if isinstance(exc, TimeoutError) or (isinstance(exc, ConnectionAbortedError) and "longer than" in str(exc)):
        return "no TLS handshake in time (a peer that does not speak TLS, or a stalled one)"
    if isinstance(exc, ConnectionError | EOFError):
        return "the connection was closed during the TLS handshake"
    return str(exc) or type(exc).__name__


__all__ = [
    "DICOM_TLS_PORT",
    "HANDSHAKE_REASONS",
    "TLSConfigError",
    "TLSInfo",
    "client_context",
    "describe_tls_error",
    "server_context",
    "subject_of",
    "tls_info",
    "CrlInfo",
    "ReloadingContext",
    "TLSContext",
    "crl_warnings",
    "current_context",
    "current_context_async",
    "read_crl_file",
]
