"""Throwaway certificates for tests: a CA, server and client certificates, as PEM files.

Plugin authors' tests (and nexus's own) use it to run a host over TLS and mutual TLS::

    ca = TestCA.create(tmp_path)
    server = ca.issue("server", dns=("localhost",), ips=("127.0.0.1",))
    client = ca.issue("orders", uris=("spiffe://acme/orders",), client=True)

Keys are EC P-256 (fast to make); every file is written with mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["IssuedCert", "TestCA"]

_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class IssuedCert:
    """A certificate and its key on disk."""

    cert_file: Path
    key_file: Path
    serial: int

    @property
    def cert_pem(self) -> bytes:
        """The certificate (chain) as PEM."""
        return self.cert_file.read_bytes()

    @property
    def key_pem(self) -> bytes:
        """The private key as PEM."""
        return self.key_file.read_bytes()


@dataclass(frozen=True)
class TestCA:
    """A self-signed certificate authority whose files live in ``directory``."""

    __test__ = False  # not a pytest test class, despite the name

    directory: Path
    name: str
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def cert_file(self) -> Path:
        """The CA certificate (PEM): what clients trust, or ``client_ca_file``."""
        return self.directory / f"{self.name}.crt"

    @classmethod
    def create(cls, directory: str | os.PathLike[str], name: str = "ca") -> TestCA:
        """A new CA valid from yesterday for ten years, written to ``directory/name.crt``."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"nexus test {name}")])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 3650 * _DAY)
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        ca = cls(folder, name, key, certificate)
        _write(ca.cert_file, certificate.public_bytes(serialization.Encoding.PEM))
        return ca

    def issue(
        self,
        name: str,
        *,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        uris: tuple[str, ...] = (),
        client: bool = False,
        days: float = 30.0,
        expired: bool = False,
        not_yet_valid: bool = False,
        starts_in: float = 0.0,
        directory: str | os.PathLike[str] | None = None,
    ) -> IssuedCert:
        """A certificate for ``name`` with those SANs, signed by this CA.

        ``client`` makes a client certificate (extended key usage clientAuth), else a
        server one (serverAuth). ``expired`` makes one that expired yesterday,
        ``not_yet_valid`` one valid from tomorrow, ``starts_in`` (seconds, when not 0) one
        valid from that far ahead. The files
        are ``name.crt`` and ``name.key`` in ``directory`` (default: the CA's).
        """
        folder = Path(directory) if directory is not None else self.directory
        folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        not_before, not_after = now - _DAY, now + datetime.timedelta(days=days)
        if expired:
            not_before, not_after = now - 30 * _DAY, now - _DAY
        if not_yet_valid:
            not_before, not_after = now + _DAY, now + 30 * _DAY
        if starts_in:
            not_before = now + datetime.timedelta(seconds=starts_in)
        names: list[x509.GeneralName] = [x509.DNSName(value) for value in dns]
        names += [x509.IPAddress(ipaddress.ip_address(value)) for value in ips]
        names += [x509.UniformResourceIdentifier(value) for value in uris]
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        issued = IssuedCert(folder / f"{name}.crt", folder / f"{name}.key", serial)
        _write(issued.cert_file, certificate.public_bytes(serialization.Encoding.PEM))
        _write(
            issued.key_file,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        return issued


def _write(path: Path, data: bytes) -> None:
    # Written whole under a temporary name, then renamed: a host watching the file never
    # reads half of it (how certificate tooling such as cert-manager swaps files too).
    # mkstemp makes a new file of a random name, 0600, refusing one that exists (a link
    # planted under a predictable name would otherwise redirect the key).
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
