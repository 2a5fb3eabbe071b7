"""A throw-away certificate authority for TLS tests (``cryptography``), never used outside tests."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID = dt.timedelta(days=2)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class TestCA:
    """A self-signed CA that issues server certificates."""

    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    __test__ = False  # not a pytest test class

    @classmethod
    def create(cls, name: str) -> TestCA:
        """A new CA called ``name``."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + _VALID)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(name, key, cert)

    def issue(self, *, dns: list[str], ips: tuple[str, ...] = (), client: bool = False) -> tuple[bytes, bytes]:
        """A server certificate for ``dns`` names and ``ips`` (``client``: a client certificate for
        mutual TLS, named by ``dns[0]``); (cert PEM, key PEM)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        san = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(dns[0] if dns else ips[0])).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + _VALID)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client
                                                  else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)

    def write_ca(self, path: Path) -> Path:
        """Write the CA certificate (the trust anchor clients get as ``RPM_MQTT_CA``)."""
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path


def write_server_files(ca: TestCA, directory: Path, *, dns: list[str], ips: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """Issue a server certificate and write ``server.pem`` and ``server.key`` (0600) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = ca.issue(dns=dns, ips=ips)
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert)
    key_path.write_bytes(key)
    key_path.chmod(0o600)
    return cert_path, key_path
