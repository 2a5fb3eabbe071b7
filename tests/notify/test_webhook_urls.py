"""Webhook URLs: ``https://`` only, plain ``http://`` only to the one host a channel names; near misses refused."""

from __future__ import annotations

import pytest

from notify.cli import check_webhook_secrets
from notify.errors import RoutesError
from notify.loader import parse_routes
from notify.model import webhook_url_problem
from rpm_core.errors import ConfigError
from rpm_core.settings import Secret


def routes(url: str, allow: str | None = None) -> str:
    extra = f", allow_http_host: {allow!r}" if allow is not None else ""
    return ("version: 1\nreceivers:\n  pager: {channels: [{type: webhook, url: " + repr(url)
            + ", secret_env: HOOK_SECRET" + extra + "}]}\nroute: {receiver: pager}\n")


@pytest.mark.parametrize(("url", "allow"), [
    ("https://pager.hospital.example/rpm/on-call", None),
    ("https://pager.hospital.example:8443/x?team=3", None),
    ("https://pager.hospital.example/x", "127.0.0.1"),  # an unused allowance is harmless
    ("http://127.0.0.1:8080/hook", "127.0.0.1"),
    ("http://pager.local/hook", "pager.local"),
    ("http://PAGER.local/hook", "pager.local"),  # host names are case-insensitive
    ("http://[::1]:8080/hook", "::1"),
])
def test_accepted(url: str, allow: str | None) -> None:
    assert webhook_url_problem(url, allow) is None
    (channel,) = parse_routes(routes(url, allow)).receivers["pager"].channels
    assert channel.url == url and channel.allow_http_host == allow


@pytest.mark.parametrize(("url", "allow", "why"), [
    ("http://pager.hospital.example/x", None, "allow it for exactly this host"),
    ("http://127.0.0.1:8080/x", None, "unencrypted"),
    ("HTTPS://pager.example/x", None, "lower case"),
    ("Https://pager.example/x", None, "lower case"),
    ("HTTP://127.0.0.1/x", "127.0.0.1", "lower case"),
    ("https://pager.example@evil.example/x", None, "user information"),
    ("https://user:secret@pager.example/x", None, "user information"),
    ("http://127.0.0.1@evil.example/x", "127.0.0.1", "user information"),
    ("http://127.0.0.1:80@evil.example/x", "127.0.0.1", "user information"),
    ("http://evil.example#@127.0.0.1/x", "127.0.0.1", "fragment"),
    ("http://evil.example\\@127.0.0.1/x", "127.0.0.1", "backslash"),
    ("http://127.0.0.1.evil.example/x", "127.0.0.1", "only to"),
    ("http://allowed-host.evil.com/x", "allowed-host", "only to"),
    ("http://evil.com/allowed-host", "allowed-host", "only to"),
    ("http://evil.com/?h=127.0.0.1", "127.0.0.1", "only to"),
    (" https://pager.example/x", None, "white space"),
    ("https://pager.example/x ", None, "white space"),
    ("https://pager.example /x", None, "white space"),
    ("https://pager.example/x\n", None, "white space"),
    ("https://pager.example/\tx", None, "white space"),
    ("https://pager.example/\x00x", None, "control"),
    ("https:///x", None, "needs a host"),
    ("https://:443/x", None, "needs a host"),
    ("https://pager.example:99999/x", None, "host or port"),
    ("https://pager.example:0/x", None, "port"),
    ("https://pager.example/x#top", None, "fragment"),
    ("ftp://pager.example/x", None, "not an http(s) URL"),
    ("//pager.example/x", None, "not an http(s) URL"),
    ("pager.example/x", None, "not an http(s) URL"),
    ("javascript:alert(1)", None, "not an http(s) URL"),
    ("https:/pager.example/x", None, "not an http(s) URL"),
])
def test_refused(url: str, allow: str | None, why: str) -> None:
    problem = webhook_url_problem(url, allow)
    assert problem is not None and why in problem, problem
    with pytest.raises(RoutesError, match=r"receivers\.pager\.channels") as err:
        parse_routes(routes(url, allow), source="routes.yaml")
    assert "routes.yaml" in str(err.value)


@pytest.mark.parametrize("allow", ["*.example", "127.0.0.1:8080", "http://127.0.0.1", "Pager.Local", "",
                                   "a b", "pager.local/", "pager..local", "-pager.local"])
def test_the_allowance_names_one_plain_host(allow: str) -> None:
    with pytest.raises(RoutesError, match="allow_http_host"):
        parse_routes(routes("http://pager.local/x", allow))


def test_the_default_routes_file_uses_https_only() -> None:
    from pathlib import Path

    from notify.loader import load_routes

    loaded = load_routes(Path(__file__).resolve().parents[2] / "routes.yaml")
    hooks = [c for r in loaded.receivers.values() for c in r.channels if c.type == "webhook"]
    assert hooks and all(c.url and c.url.startswith("https://") and c.allow_http_host is None for c in hooks)


@pytest.mark.parametrize(("secret", "why"), [
    ("", "not set"), ("short-secret", "shorter than 20"), ("password1234567890123", "common"),
    ("aaaaaaaaaaaaaaaaaaaaaaaa", "different characters"), ("abcdefghijklmnopqrstuvwxyz", "run"),
])
def test_weak_webhook_secrets_are_refused_naming_the_variable(secret: str, why: str) -> None:
    loaded = parse_routes(routes("https://pager.example/x"), source="routes.yaml")
    with pytest.raises(ConfigError, match=f"HOOK_SECRET.*routes.yaml.*{why}"):
        check_webhook_secrets(loaded, {"HOOK_SECRET": Secret(secret)})
    check_webhook_secrets(loaded, {"HOOK_SECRET": Secret("Zq3-mVt8_pL1xR6wNc0yHs4e")})


def test_the_notifier_refuses_to_start_with_a_weak_secret(tmp_path: object) -> None:
    import os
    import subprocess
    from pathlib import Path

    from tests.support.procs import rpm_argv

    file = Path(str(tmp_path)) / "routes.yaml"
    file.write_text(routes("https://pager.example/x"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_")} | {
        "RPM_KAFKA_URL": "kafka://127.0.0.1:9", "RPM_INFLUX_URL": "http://127.0.0.1:9", "RPM_ROUTES": str(file),
        "HOOK_SECRET": "changeme"}
    done = subprocess.run(rpm_argv("notifier"), env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "HOOK_SECRET" in done.stderr and "changeme" not in done.stderr, done.stderr
