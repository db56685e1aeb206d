"""Certificates for the TLS tests, made with cryptography (a dependency of ansible-core): a
self-signed CA (which may also serve as a server's own certificate, given its subjectAltName),
a server certificate signed by such a CA, and PEM bytes of either, or of a key."""

from __future__ import annotations

import datetime as dt
import ipaddress
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _valid(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (builder.serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=2)))


def _names(sans: list[str]) -> x509.SubjectAlternativeName:
    """IP addresses as such, anything else as a DNS name."""
    out: list[x509.GeneralName] = []
    for san in sans:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            out.append(x509.DNSName(san))
    return x509.SubjectAlternativeName(out)


def ca(name: str, *, sans: list[str] | None = None) -> tuple[Any, x509.Certificate]:
    """(key, certificate) of a self-signed CA named ``name``; with ``sans``, valid for those
    names too, so that a server can present it as its own."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = _valid(x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key()))
    if sans:
        builder = builder.add_extension(_names(sans), critical=False)
    cert = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256())
    return key, cert


def signed(ca_key: Any, ca_cert: x509.Certificate, name: str, sans: list[str]) -> tuple[Any, x509.Certificate]:
    """(key, certificate) of a server named ``name`` and ``sans``, signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_valid(x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(ca_cert.subject).public_key(key.public_key()))
            .add_extension(_names(sans), critical=False).sign(ca_key, hashes.SHA256()))
    return key, cert


def pem(obj: Any) -> bytes:
    """A certificate's or a private key's PEM."""
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
