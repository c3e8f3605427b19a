"""DICOM TLS: PS3.15 Annex B.1, The Basic TLS Secure Transport Connection Profile.

TLS 1.2 at least (BCP 195, as PS3.15 B.1 and its successors ask); the registered
port is 2762 (``dicom-tls``). Peers are authenticated by certificates chaining to
a CA file we are given; host names are not checked (DICOM nodes are registered by
address, and their certificates rarely name it), the chain is. This module builds
the :class:`ssl.SSLContext` of each side and says in plain words why a handshake
failed -- OpenSSL's reason codes are not something a person should have to decode.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any, Final

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


def _base(purpose: ssl.Purpose) -> ssl.SSLContext:
    ctx = ssl.create_default_context(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def server_context(
    cert_file: str, key_file: str, ca_file: str = "", require_client_cert: bool = False
) -> ssl.SSLContext:
    """The listener's side: our certificate; with ``require_client_cert`` every client must present one
    chaining to ``ca_file`` (without it a client certificate is still checked when one is sent)."""
    if not cert_file:
        raise TLSConfigError("the TLS listener needs a certificate (tls_cert_file) and its key (tls_key_file)")
    if require_client_cert and not ca_file:
        raise TLSConfigError("tls_require_client_cert needs tls_ca_file: the CA that signs the clients' certificates")
    ctx = _base(ssl.Purpose.CLIENT_AUTH)
    _load_chain(ctx, cert_file, key_file)
    if ca_file:
        _load_ca(ctx, ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_context(ca_file: str, cert_file: str = "", key_file: str = "") -> ssl.SSLContext:
    """Our side when we call a TLS node: its certificate must chain to ``ca_file``; we present
    ``cert_file`` when given (peers that require client certificates)."""
    if not ca_file:
        raise TLSConfigError("calling a TLS node needs tls_ca_file: the CA that signs the nodes' certificates")
    ctx = _base(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False  # the chain is verified; DICOM nodes are known by address, see above
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_ca(ctx, ca_file)
    if cert_file:
        _load_chain(ctx, cert_file, key_file)
    return ctx


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


def describe_tls_error(exc: BaseException) -> str:
    """An exception from a TLS handshake (or read) in plain words."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or "verification failed"
        return f"certificate unknown: {detail}"
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
]
