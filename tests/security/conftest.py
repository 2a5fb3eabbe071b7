"""Fixtures of the security tests: a test CA, an ``rpm mqtt-auth`` directory, and a Mosquitto that
uses that directory's password and ACL files with a TLS listener beside the plaintext one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rpm_app.services import ServiceProcess, TlsFiles, start_mosquitto
from rpm_core import mqtt_users
from rpm_core.mqtt_users import Role
from rpm_core.settings import MqttSettings, Secret, read_secret_file
from tests.security.pki import TestCA, write_server_files

PATIENT_A = "pA001"
PATIENT_B = "pB002"


@dataclass(frozen=True)
class Pki:
    """The test CA's certificate, a rogue CA's, and the broker's certificate for ``localhost`` only."""

    ca_file: Path
    rogue_ca_file: Path
    certfile: Path
    keyfile: Path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One CA per session; the server certificate names DNS ``localhost`` and nothing else."""
    d = tmp_path_factory.mktemp("pki")
    ca = TestCA.create("rpm test CA")
    cert, key = write_server_files(ca, d / "server", dns=["localhost"])
    return Pki(ca.write_ca(d / "ca.pem"), TestCA.create("rpm test CA").write_ca(d / "rogue-ca.pem"), cert, key)


@dataclass
class Auth:
    """An ``rpm mqtt-auth`` directory with the service users, a simulator and two agents."""

    path: Path
    passwords: dict[str, Secret]

    def add_agent(self, patient: str) -> str:
        """Create an agent user through the API; its name."""
        creds = mqtt_users.add_agent(self.path, patient)
        assert creds is not None
        self.passwords[creds.user] = creds.password
        return creds.user


@pytest.fixture
def auth(tmp_path: Path) -> Auth:
    """``rpm mqtt-auth init --simulator``, agents of patients A and B, and a notifier."""
    path = tmp_path / "mqtt-auth"
    files = mqtt_users.init_auth(path, simulator=True)
    result = Auth(path, {u: read_secret_file(f, what="test") for u, f in files.items()})
    result.add_agent(PATIENT_A)
    result.add_agent(PATIENT_B)
    notifier = mqtt_users.add_service(path, "rpm-notifier", Role.NOTIFIER)
    assert notifier is not None
    result.passwords[notifier.user] = notifier.password
    return result


@dataclass
class SecureBroker:
    """Mosquitto on the auth directory's files, plaintext and TLS listeners on loopback."""

    svc: ServiceProcess
    auth: Auth
    pki: Pki

    def settings(self, user: str | None, *, tls: bool = False, host: str = "localhost",
                 ca_file: Path | None = None, password: str | None = None) -> MqttSettings:
        """Client settings for ``user`` (None: anonymous); TLS trusts the test CA unless told otherwise."""
        port = self.svc.tls_port if tls else self.svc.port
        scheme = "mqtts" if tls else "mqtt"
        url = f"{scheme}://{host}:{port}"
        ca = str(ca_file or self.pki.ca_file) if tls else None
        s = MqttSettings.from_url(url, ca_file=ca)
        if user is None:
            return s
        return s.with_user(user, password if password is not None else self.auth.passwords[user].get())

    def url(self, user: str, *, tls: bool = True, with_password: bool = False) -> str:
        """``mqtts://user@localhost:port`` (password only if asked)."""
        s = self.settings(user, tls=tls)
        return s.url(redact=False) if with_password else s.url().replace(":***", "")


@pytest.fixture
def broker(tmp_path: Path, auth: Auth, pki: Pki) -> Iterator[SecureBroker]:
    """A fresh Mosquitto for this test, using ``auth``'s password and ACL files (SIGHUP reloads them)."""
    a = mqtt_users.AuthDir(auth.path)
    svc = start_mosquitto(tmp_path / "mosquitto", password_file=a.passwd_path, acl_file=a.acl_path,
                          tls=TlsFiles(pki.certfile, pki.keyfile, pki.ca_file))
    try:
        yield SecureBroker(svc, auth, pki)
    finally:
        svc.stop()
