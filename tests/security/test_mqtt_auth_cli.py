"""``rpm mqtt-auth``: the state, password and ACL files it keeps, and what it refuses."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from rpm_core import mqtt_users
from rpm_core.errors import ConfigError
from rpm_core.mqtt_users import PIPELINE_ACL, Role, build_acl
from tests.support.procs import rpm_argv


def rpm(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_")}
    return subprocess.run(rpm_argv("mqtt-auth", *args), env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def passwd_users(path: Path) -> list[str]:
    return [line.split(":", 1)[0] for line in (path / "passwd").read_text().splitlines() if line]


def test_init_add_revoke_list(tmp_path: Path) -> None:
    d = tmp_path / "auth"
    result = rpm("init", "--dir", str(d))
    assert result.returncode == 0, result.stderr
    assert "SIGHUP" in result.stdout
    assert sorted(passwd_users(d)) == ["rpm-admin", "rpm-alerts", "rpm-bridge", "rpm-nurse", "rpm-watchdog"]
    for f in (d / "passwd", d / "acl", d / "mqtt-auth.json", *sorted((d / "credentials").iterdir())):
        assert mode(f) == 0o600, f
    assert mode(d) == 0o700
    hashes = (d / "passwd").read_text()
    for f in (d / "credentials").iterdir():
        assert f.read_text().strip() not in hashes + result.stdout, "passwords are hashed, never printed"
    assert rpm("init", "--dir", str(d)).returncode == 2, "init does not overwrite"

    added = rpm("add-agent", "--dir", str(d), "--patient", "p0001")
    assert added.returncode == 0, added.stderr
    password = added.stdout.split("password (shown once): ")[1].split()[0]
    assert len(password) >= 32 and password not in (d / "passwd").read_text()
    assert rpm("add-agent", "--dir", str(d), "--patient", "p0001").returncode == 1, "exists: nothing changed"
    rotated = rpm("add-agent", "--dir", str(d), "--patient", "p0001", "--rotate")
    assert rotated.returncode == 0 and password not in rotated.stdout

    acl = (d / "acl").read_text()
    assert "user agent-p0001\ntopic write rpm/v1/p/p0001/readings\ntopic write rpm/v1/p/p0001/status\n" \
           "topic write rpm/v1/p/p0001/ack\ntopic read rpm/v1/p/p0001/cmd" in acl
    assert acl.count("topic ") == 2 + 1 + 1 + 1 + 1 + 4  # bridge, alerts, nurse, admin, watchdog, the agent
    revoked = rpm("revoke", "--dir", str(d), "--user", "agent-p0001")
    assert revoked.returncode == 0, revoked.stderr
    assert "agent-p0001" not in passwd_users(d) and "agent-p0001" not in (d / "acl").read_text()
    assert rpm("revoke", "--dir", str(d), "--user", "agent-p0001").returncode == 2
    listing = rpm("list", "--dir", str(d))
    assert listing.returncode == 0
    lines = {line.split()[0]: line.split() for line in listing.stdout.splitlines()[1:]}
    assert lines["agent-p0001"][3] == "revoked" and lines["rpm-bridge"][1:4] == ["bridge", "-", "active"]
    state = json.loads((d / "mqtt-auth.json").read_text())
    assert "agent-p0001" in state["revoked"] and "agent-p0001" not in state["users"]


@pytest.mark.parametrize("patient", ["p 1", "p1\nuser rpm-admin", "p#", "p+", "a/b", "x" * 65, "", "p:1"])
def test_patient_ids_that_could_inject_into_the_acl_are_refused(tmp_path: Path, patient: str) -> None:
    d = tmp_path / "auth"
    mqtt_users.init_auth(d)
    before = (d / "acl").read_text()
    result = rpm("add-agent", "--dir", str(d), "--patient", patient)
    assert result.returncode == 2 and "[A-Za-z0-9" in result.stderr
    assert (d / "acl").read_text() == before


@pytest.mark.parametrize("user", ["a:b", "a b", "a\nb", "", "#"])
def test_user_names_that_break_the_password_file_are_refused(user: str) -> None:
    with pytest.raises(ConfigError):
        build_acl([(user, Role.ADMIN, None)])


def test_roles_and_patients_must_fit_together() -> None:
    with pytest.raises(ConfigError, match="needs"):
        build_acl([("agent-x", Role.AGENT, None)])
    with pytest.raises(ConfigError, match="takes no"):
        build_acl([("rpm-bridge", Role.BRIDGE, "p1")])


def test_pipeline_acl_grants_exactly_the_roles() -> None:
    blocks = {b.split("user ")[1].split("\n")[0]: b.strip() for b in PIPELINE_ACL.split("\n\n")[1:]}
    assert blocks["rpm-bridge"].endswith("topic read rpm/v1/p/+/readings\ntopic read rpm/v1/p/+/status")
    assert blocks["rpm-nurse"].endswith("topic read rpm/v1/alerts/#")
    assert blocks["rpm-alerts"].endswith("topic write rpm/v1/alerts/#")
    assert blocks["rpm-admin"].endswith("topic readwrite #")


def test_a_broken_state_file_is_named(tmp_path: Path) -> None:
    d = tmp_path / "auth"
    mqtt_users.init_auth(d)
    (d / "mqtt-auth.json").write_text('{"version": 1, "users": {"x": {"role": "root"}}}')
    result = rpm("list", "--dir", str(d))
    assert result.returncode == 2 and f"{d / 'mqtt-auth.json'}" in result.stderr and "unknown role" in result.stderr
    assert rpm("list").returncode == 2, "no --dir and no RPM_MQTT_AUTH_DIR"


def test_add_service_user(tmp_path: Path) -> None:
    d = tmp_path / "auth"
    mqtt_users.init_auth(d)
    out = tmp_path / "bridge-2.pw"
    result = rpm("add-service", "--dir", str(d), "--user", "rpm-bridge-2", "--role", "bridge", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert mode(out) == 0o600 and "rpm-bridge-2" in passwd_users(d)
    assert "user rpm-bridge-2\ntopic read rpm/v1/p/+/readings" in (d / "acl").read_text()
    clash = rpm("add-service", "--dir", str(d), "--user", "rpm-bridge-2", "--role", "admin")
    assert clash.returncode == 2 and "exists with role bridge" in clash.stderr
    assert rpm("add-service", "--dir", str(d), "--user", "x", "--role", "agent").returncode == 2


def test_reload_pid_of_a_process_that_is_gone_is_an_error(tmp_path: Path) -> None:
    d = tmp_path / "auth"
    mqtt_users.init_auth(d)
    proc = subprocess.Popen(["true"])
    proc.wait()
    result = rpm("add-agent", "--dir", str(d), "--patient", "p1", "--reload-pid", str(proc.pid))
    assert result.returncode == 2 and "no process" in result.stderr


def test_list_is_an_access_review_created_changed_revoked(tmp_path: Path) -> None:
    d = tmp_path / "auth"
    assert rpm("init", "--dir", str(d)).returncode == 0
    assert rpm("add-agent", "--dir", str(d), "--patient", "p0001").returncode == 0
    created = json.loads((d / "mqtt-auth.json").read_text())["users"]["agent-p0001"]["created"]
    assert rpm("add-agent", "--dir", str(d), "--patient", "p0001", "--rotate").returncode == 0
    user = json.loads((d / "mqtt-auth.json").read_text())["users"]["agent-p0001"]
    assert user["created"] == created and user["changed"] >= created, "a rotation keeps the creation time"
    assert rpm("add-agent", "--dir", str(d), "--patient", "p0002").returncode == 0
    assert rpm("revoke", "--dir", str(d), "--user", "agent-p0001").returncode == 0
    listing = rpm("list", "--dir", str(d))
    header, *rows = listing.stdout.splitlines()
    assert header.split() == ["user", "role", "patient", "status", "created", "changed", "revoked"]
    lines = {r.split()[0]: r.split() for r in rows}
    assert lines["agent-p0001"] == ["agent-p0001", "agent", "p0001", "revoked", created, user["changed"],
                                    lines["agent-p0001"][6]]
    assert lines["agent-p0001"][6] != "-"
    assert lines["agent-p0002"][3:] == ["active", lines["agent-p0002"][4], "-", "-"]
    assert lines["rpm-bridge"][1:4] == ["bridge", "-", "active"]


def test_a_state_file_written_before_change_times_is_read(tmp_path: Path) -> None:
    """Backward compatible: users without ``changed``, revoked users as bare times, no ``retired``."""
    d = tmp_path / "auth"
    mqtt_users.init_auth(d)
    state = json.loads((d / "mqtt-auth.json").read_text())
    state["users"]["agent-p0009"] = {"role": "agent", "patient": "p0009", "created": "2025-01-02T03:04:05+00:00"}
    state["revoked"] = {"agent-old": "2025-02-03T04:05:06+00:00"}
    state.pop("retired", None)
    (d / "mqtt-auth.json").write_text(json.dumps(state))
    listing = rpm("list", "--dir", str(d))
    assert listing.returncode == 0, listing.stderr
    lines = {r.split()[0]: r.split() for r in listing.stdout.splitlines()[1:]}
    assert lines["agent-p0009"][3:] == ["active", "2025-01-02T03:04:05+00:00", "-", "-"]
    assert lines["agent-old"][3:] == ["revoked", "-", "-", "2025-02-03T04:05:06+00:00"]
    rotated = rpm("add-agent", "--dir", str(d), "--patient", "p0009", "--user", "agent-p0009", "--rotate")
    assert rotated.returncode == 0, rotated.stderr
    user = json.loads((d / "mqtt-auth.json").read_text())["users"]["agent-p0009"]
    assert user["created"] == "2025-01-02T03:04:05+00:00" and user["changed"] > user["created"]
