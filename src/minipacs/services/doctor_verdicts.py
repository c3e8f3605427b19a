"""What `minipacs doctor` says about each step: the verdicts, likely causes and fixes, in words a
site engineer understands without the standard at hand.

The checks themselves are in services/doctor.py; this module only words them, so that the
CLI, REST and the Diagnostics page say the same sentences.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from minipacs.dicom.reasons import REJECT_REASONS, in_words


@dataclass(frozen=True)
class Words:
    """One verdict: what happened, why it usually happens, what to do."""

    verdict: str
    cause: str = ""
    fix: str = ""


# ------------------------------------------------------------------ step 1: the name and TCP


def unresolved(host: str, error: str) -> Words:
    return Words(
        f"the host name {host!r} does not resolve to an address ({error})",
        "a typing error in the registered host, or this machine's DNS does not know the name",
        f"register the node with its IP address, or add {host!r} to DNS or /etc/hosts",
    )


def refused(host: str, port: int, title: str = "AET") -> Words:
    return Words(
        f"{host} refused the TCP connection on port {port}",
        "nothing is listening on that port: the node's DICOM service is stopped, or it listens on another "
        "port than the one registered here (a firewall that rejects, rather than drops, looks the same)",
        f"start the node's DICOM service, or register its right port: minipacs nodes add {title} {host} <PORT>",
    )


def timed_out(host: str, port: int, seconds: float) -> Words:
    return Words(
        f"no answer from {host}:{port} within {seconds:g} s",
        "the host is switched off or unreachable, or a firewall silently drops the connection",
        f"check that {host} is up (ping), and ask the network team to open TCP port {port} from this server",
    )


def reset(host: str, port: int) -> Words:
    return Words(
        f"{host}:{port} reset the TCP connection at once",
        "a firewall rejecting the connection, or a service that closes the door on this address",
        f"ask the network team whether a firewall rejects TCP port {port} from this server; check the node's "
        "own list of allowed addresses",
    )


def unreachable(host: str, port: int, error: str) -> Words:
    return Words(
        f"cannot reach {host}:{port}: {error}",
        "no network route to the host: a wrong address, or a router or firewall refusing the way",
        "check the registered address and this server's network settings (route, VLAN)",
    )


def connected(host: str, port: int, address: str) -> str:
    return f"TCP connection to {host}:{port} ({address}) opened"


# ------------------------------------------------------------------ step 2: the association

#: PS3.8 Table 9-21 (source, reason) -> likely cause and fix; {ours}, {port}, {theirs}, {host} are filled in.
_REJECTIONS: Final[Mapping[tuple[int, int], tuple[str, str]]] = {
    (1, 3): (
        "the node does not know our AE title {ours}",
        "register it there with {us} (AE title {ours}, exactly, upper case as written)",
    ),
    (1, 7): (
        "the node does not know our AE title {ours}, or does not answer to the title {theirs} we call it by: it "
        "says 'called AE title', but many systems (DCMTK dcmqrscp among them) give this same answer when our "
        "title is not among the peers they allow",
        "register it there with {us} (AE title {ours}) as a peer allowed to use {theirs}; "
        "and check that the node's own AE title is exactly {theirs}",
    ),
    (1, 1): (
        "the node refused without saying why; most often it does not know our AE title {ours} or our address, "
        "or it wants a user name and password",
        "register us there (AE title {ours}, {us}) and check its list of allowed hosts",
    ),
    (1, 2): (
        "the node does not speak the DICOM application context (it may not be a DICOM service)",
        "check that the registered port is the node's DICOM port",
    ),
    (2, 1): (
        "the node's network layer refused without saying why",
        "look in the node's log for the reason",
    ),
    (2, 2): (
        "the node does not support the DICOM protocol version we use",
        "check that the registered port is the node's DICOM port",
    ),
    (3, 1): (
        "the node is busy (temporary congestion)",
        "try again later; if it keeps happening, ask the node's vendor about its capacity",
    ),
    (3, 2): (
        "the node has reached its limit of simultaneous associations",
        "try again later, or raise the node's maximum number of associations",
    ),
}


def us(address: str, port: int) -> str:
    """How the node must know us: 'our address 10.0.0.5 and port 11112' (the address it saw us connect from)."""
    return f"our address {address} and port {port}" if address else f"our address and port {port}"


def rejected(
    source: int, reason: int, permanent: bool, *, ours: str, us: str, theirs: str, host: str, wire: str
) -> Words:
    """An A-ASSOCIATE-RJ (PS3.8 9.3.4, Table 9-21) in words, with the fix."""
    term = REJECT_REASONS.get((source, reason))
    said = in_words(term) if term else f"reason {reason}"
    cause, fix = _REJECTIONS.get(
        (source, reason), ("the node gave a reason this program does not know", "look in the node's log")
    )
    values = {"ours": ours, "us": us, "theirs": theirs, "host": host}
    kind = "permanently" if permanent else "for now (transient)"
    return Words(
        f"the node rejected the association {kind}: {said} ({wire})",
        cause.format(**values),
        fix.format(**values),
    )


def association_failed(wire: str, *, ours: str, us: str) -> Words:
    """No A-ASSOCIATE-AC nor -RJ: the node aborted, closed the connection or never answered."""
    if "TLS" in wire:
        return Words(
            f"the TLS handshake failed: {wire}",
            "the node does not speak TLS on that port, or does not trust our certificate (or we not its)",
            "check the node's TLS settings and our tls_ca_file / tls_cert_file / tls_key_file",
        )
    if "within" in wire or "timeout" in wire.lower() or "ARTIM" in wire:
        return Words(
            f"the node accepted the TCP connection but did not answer the association request ({wire})",
            "the port belongs to another service, or the node is hung or overloaded; a TLS-only port "
            "also stays silent to a plain request",
            "check that the registered port is the node's DICOM port and whether it expects TLS",
        )
    return Words(
        f"the node ended the connection instead of answering the association request ({wire})",
        f"the node filters by address or AE title and does not know us ({ours}), or it expects TLS on this port",
        f"register us there (AE title {ours}, {us}); check whether the port is a TLS port",
    )


def accepted(theirs: str, ours: str) -> str:
    return f"association accepted: the node answers to {theirs!r} and accepts us as {ours!r}"


# ------------------------------------------------------------------ step 3: C-ECHO


def echo_ok(ms: list[float]) -> str:
    ordered = sorted(ms)
    median = ordered[len(ordered) // 2]
    return f"C-ECHO answered {len(ms)} time(s), round trip {median:.1f} ms (from {ordered[0]:.1f} to {ordered[-1]:.1f})"


def nagle(median_ms: float) -> Words:
    return Words(
        f"each C-ECHO round trip takes about {median_ms:.0f} ms, which is the signature of Nagle's algorithm on "
        "one side meeting delayed acknowledgements on the other, not of the network",
        "one side sends small DICOM messages without TCP_NODELAY, so every request waits for a delayed ACK; "
        "a study of 1000 images then spends 40 s doing nothing",
        "turn Nagle off on the node: for DCMTK-based peers set the environment variable TCP_NODELAY=1 "
        "before starting them; for others look for a 'TCP no delay' setting",
    )


def echo_refused(status_text: str) -> Words:
    return Words(
        f"the node answered C-ECHO with {status_text}",
        "the node accepts the association but refuses verification, usually because it does not allow our AE title",
        "check the node's permissions for our AE title",
    )


ECHO_NOT_ACCEPTED: Final = Words(
    "the node accepted the association but not the Verification service (C-ECHO)",
    "some viewers and modalities do not offer C-ECHO; everything else may still work",
    "nothing to fix if the next steps pass; otherwise enable Verification on the node",
)


# ------------------------------------------------------------------ step 4: what it accepts

NOTHING_ACCEPTED: Final = Words(
    "the node accepts none of the query/retrieve models and none of the storage classes we would use",
    "it is configured for other services only, or does not accept our AE title for them",
    "enable Query/Retrieve and Storage for our AE title on the node",
)


# ------------------------------------------------------------------ step 5: the way back


def move_no_instance(why: str) -> Words:
    return Words(
        f"cannot test the way back: {why}",
        "the node has no instance to move, or it does not answer C-FIND",
        "store one instance on the node, then run the test again",
    )


def move_arrived(calling: str, host: str, count: int, seconds: float) -> str:
    return (
        f"the images came back: {count} instance(s) reached us within {seconds:.1f} s from {host}, "
        f"calling as {calling!r}"
    )


def move_destination_unknown(ours: str, us: str) -> Words:
    return Words(
        f"the node does not know our AE title {ours} as a C-MOVE destination (0xA801)",
        f"{ours} is not in the node's list of destinations",
        f"register {ours} there with {us}",
    )


def move_failed_nothing_arrived(status: str, ours: str, us: str) -> Words:
    return Words(
        f"the node could not send the images to us: it answered {status}, and nothing reached us",
        f"the node resolves our AE title {ours} to another address or port, or a firewall blocks the connection back",
        f"correct the entry for {ours} on the node: {us}; open that TCP port from the node to this server",
    )


def move_success_nothing_arrived(seconds: float, ours: str, us: str) -> Words:
    return Words(
        f"the node answered C-MOVE success but no images arrived within {seconds:g} s: it resolves our AE title "
        "to another address or cannot open a connection back",
        f"the node's entry for {ours} points to another machine (the seed's duplicate AE title), or a firewall "
        "blocks the connection back",
        f"check the node's entry for {ours}: {us}; and that no other machine uses {ours}",
    )


def move_refused(status: str, comment: str) -> Words:
    return Words(
        f"the node refused the C-MOVE: {status}" + (f" ({comment})" if comment else ""),
        "the node does not allow us to retrieve, or cannot find the instance it listed",
        "check the node's permissions for our AE title",
    )


def move_other_caller(calling: str, theirs: str) -> str:
    return (
        f"the sub-association called us as {calling!r}, not as the node's registered title {theirs!r}: "
        "with check_calling_host or an access policy it may be refused here"
    )


def store_ok(status: str) -> str:
    return f"the node accepted the test object: {status}"


def store_refused(why: str) -> Words:
    return Words(
        f"the node did not accept the test object: {why}",
        "the node does not accept Secondary Capture images from our AE title, or is full",
        "allow our AE title to store on the node, and check its disk space",
    )


# ------------------------------------------------------------------ step 6: TLS


def tls_ok(version: str, subject: str, days: int) -> str:
    return f"TLS handshake ({version}) succeeded; the node's certificate {subject!r} is valid for {days} more day(s)"


def tls_expiring(subject: str, days: int) -> Words:
    return Words(
        f"the node's certificate {subject!r} expires in {days} day(s)",
        "certificates have a fixed lifetime",
        "have the node's certificate renewed before it expires; after that every TLS association fails",
    )


def tls_failed(error: str) -> Words:
    return Words(
        f"the TLS handshake failed: {error}",
        "the node's certificate is not signed by a CA we trust, has expired, names another host, or the port "
        "does not speak TLS",
        "give us the CA that signed the node's certificate (tls_ca_file), or renew the node's certificate",
    )


TLS_NOT_CONFIGURED: Final = Words(
    "the node is registered with TLS but this archive has no TLS client settings",
    "tls_ca_file is not set",
    "set tls_ca_file (and tls_cert_file / tls_key_file if the node wants our certificate)",
)


# ------------------------------------------------------------------ the site


def listener_down(what: str, host: str, port: int) -> Words:
    return Words(
        f"nothing listens on our {what} port {port} ({host})",
        "the archive is not running, or runs with other settings than these",
        "start it: minipacs serve (with the same --config/--data)",
    )


__all__ = ["Words"]

#: tls_crl_file out of date, due soon or unusable (services/doctor.py check_crl_file).
CRL_CAUSE: Final = (
    "the CA publishes a new CRL before the old one's nextUpdate, and nothing here fetched it "
    "(a cron job that downloads it, or a CA that stopped publishing)"
)
CRL_FIX: Final = (
    "put the CA's current CRL (PEM) in tls_crl_file; the server reads the file again when it changes, no restart needed"
)
