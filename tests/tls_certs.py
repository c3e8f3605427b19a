"""Throwaway X.509 certificates for the DICOM TLS tests: a CA, a server and clients (PEM files).

Made with the ``cryptography`` package; RSA 2048 and SHA-256, which every profile of
DCMTK 3.6.7 (BCP 195 non-downgrading by default) accepts.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the CA certificate (PEM): what both sides trust
    ca_key: Path  # its private key (PEM): signs the CRLs of write_crl
    server: KeyPair  # CN=minipacs, for 127.0.0.1 and localhost; also our client certificate
    client: KeyPair  # CN=ECHOSCU,O=Test Modality, signed by the CA
    stranger: KeyPair  # CN=STRANGER, signed by another CA: "certificate unknown"


def _name(cn: str, org: str = "minipacs tests") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(folder: Path, stem: str, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> KeyPair:
    pair = KeyPair(folder / f"{stem}.pem", folder / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    return pair


def _ca(cn: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_key: rsa.RSAPrivateKey, ca_cert: x509.Certificate, name: x509.Name, *usage: x509.ObjectIdentifier
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usage)), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def make_pki(folder: Path) -> Certificates:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("minipacs test CA")
    ca_pair = _write(folder, "ca", ca_key, ca_cert)
    ca = ca_pair.cert
    server = _write(
        folder,
        "server",
        *_leaf(ca_key, ca_cert, _name("minipacs"), ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
    )
    client = _write(
        folder, "client", *_leaf(ca_key, ca_cert, _name("ECHOSCU", "Test Modality"), ExtendedKeyUsageOID.CLIENT_AUTH)
    )
    other_key, other_cert = _ca("some other CA")
    stranger = _write(
        folder, "stranger", *_leaf(other_key, other_cert, _name("STRANGER"), ExtendedKeyUsageOID.CLIENT_AUTH)
    )
    return Certificates(ca, ca_pair.key, server, client, stranger)


def write_crl(
    pki: Certificates,
    path: Path,
    revoked: tuple[Path, ...] = (),
    *,
    this_update: dt.datetime | None = None,
    next_update: dt.timedelta = dt.timedelta(days=7),
    signer: Path | None = None,
    issuer: str = "",
    append: bool = False,
) -> Path:
    """A CRL of the test CA (PEM, RFC 5280 5.1) listing the certificates at ``revoked``; ``next_update``
    after ``this_update`` (default: an hour ago); ``signer``: another key signs it (a forged
    CRL); ``issuer``: the common name of another CA it claims to be of; ``append``: added after the CRLs
    already in ``path``."""
    ca_cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    key = serialization.load_pem_private_key((signer or pki.ca_key).read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    start = this_update or dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    name = _name(issuer) if issuer else ca_cert.subject
    builder = (
        x509.CertificateRevocationListBuilder().issuer_name(name).last_update(start).next_update(start + next_update)
    )
    for cert_path in revoked:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(start).build()
        )
    crl = builder.sign(key, hashes.SHA256())
    pem = crl.public_bytes(serialization.Encoding.PEM)
    path.write_bytes((path.read_bytes() if append else b"") + pem)
    return path
