"""The backend roles' health probe (module_utils/doai_health), against real HTTP and HTTPS
servers on loopback: what it answers, and the guards it sets itself instead of leaving them to
urllib's defaults (certificates and host names checked, http(s) only, redirects to http(s)
only, no ~/.netrc credentials, a URL's own credentials to that URL only, the environment's proxy
as before)."""

from __future__ import annotations

import base64
import http.server
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import certs
from tests.conftest import module_utils

health = module_utils("doai_health")


class Handler(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        Handler.seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
        routes = {
            "/api/health": (200, {}, json.dumps({"status": "ok", "version": "2.0.0"}).encode()),
            "/down": (503, {}, b'{"status": "down", "version": "3.0.0"}'),
            "/moved": (302, {"Location": "/api/health"}, b""),
            "/to-ftp": (302, {"Location": "ftp://127.0.0.1/health"}, b""),
            "/to-file": (302, {"Location": "file:///etc/hostname"}, b""),
            "/private": (401, {"WWW-Authenticate": 'Basic realm="x"'}, b"who?"),
            "/to-private": (302, {"Location": "/private"}, b""),
        }
        if self.path.startswith("http://"):  # asked as a proxy
            routes[self.path] = (200, {}, b'{"version": "via-proxy"}')
        code, headers, body = routes.get(self.path, (404, {}, b"no"))
        if self.path == "/private" and self.headers.get("Authorization"):
            code, body = 200, b'{"version": "with-credentials"}'
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def serve(tls: ssl.SSLContext | None = None) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """A new opener per test (its TLS context reads SSL_CERT_FILE once), no proxy or netrc of
    the caller's."""
    monkeypatch.setattr(health, "_OPENER", None)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "all_proxy",
                "ALL_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    Handler.seen.clear()


@pytest.fixture
def http_url() -> Iterator[str]:
    yield from serve()


def cert(tmp_path: Path, name: str, san: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``san`` that a server presents as its own; (cert, key) files."""
    key, crt = certs.ca(name, sans=[san])
    paths = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    paths[0].write_bytes(certs.pem(crt))
    paths[1].write_bytes(certs.pem(key))
    return paths


def tls_server(crt: Path, key: Path) -> Iterator[str]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    yield from serve(ctx)


def test_a_healthy_answer_its_body_and_version(http_url):
    code, body = health.probe(http_url + "/api/health", 2)
    assert code == 200 and health.reported_version(body) == "2.0.0"
    assert Handler.seen[-1]["user-agent"] == "doai-rollback-health"


def test_an_error_status_is_an_answer_with_its_body(http_url):
    code, body = health.probe(http_url + "/down", 2)
    assert code == 503 and health.reported_version(body) == "3.0.0"


def test_nothing_listening_is_no_answer():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the probe
    code, reason = health.probe(f"http://127.0.0.1:{port}/api/health", 2)
    assert code is None and b"refused" in reason.lower()


def test_not_http_is_no_answer():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)

        def banner() -> None:
            conn, _ = srv.accept()
            conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
            conn.close()

        threading.Thread(target=banner, daemon=True).start()
        code, reason = health.probe(f"http://127.0.0.1:{srv.getsockname()[1]}/", 2)
    assert code is None and reason


def test_a_redirect_to_http_is_followed(http_url):
    code, body = health.probe(http_url + "/moved", 2)
    assert code == 200 and health.reported_version(body) == "2.0.0"
    assert [s["path"] for s in Handler.seen] == ["/moved", "/api/health"]


@pytest.mark.parametrize("path", ["/to-ftp", "/to-file"])
def test_a_redirect_away_from_http_is_not_followed(http_url, path):
    code, _ = health.probe(http_url + path, 2)
    assert code == 302  # not healthy, and nothing but the one request was made
    assert [s["path"] for s in Handler.seen] == [path]


@pytest.mark.parametrize("url", ["file:///etc/hostname", "ftp://127.0.0.1/x", "data:,{\"version\":\"2.0.0\"}"])
def test_only_http_urls_are_probed(url):
    assert health.probe(url, 2) == (None, b"not an http(s) URL")


def test_netrc_credentials_are_not_sent(http_url, tmp_path, monkeypatch):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login ops password canary-netrc\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".netrc").write_text(netrc.read_text())
    (tmp_path / ".netrc").chmod(0o600)
    code, _ = health.probe(http_url + "/private", 2)
    assert code == 401 and "authorization" not in Handler.seen[-1]


def test_credentials_in_the_url_reach_that_url_and_not_a_redirects_target(http_url):
    base = http_url.replace("http://", "http://ops:p%40ss@")
    code, body = health.probe(base + "/private", 2)
    assert code == 200 and health.reported_version(body) == "with-credentials"
    assert Handler.seen[-1]["authorization"] == "Basic " + base64.b64encode(b"ops:p@ss").decode()
    assert Handler.seen[-1]["host"] == http_url.split("//", 1)[1]  # not the credentials
    Handler.seen.clear()
    code, _ = health.probe(base + "/to-private", 2)
    assert code == 401 and [s["path"] for s in Handler.seen] == ["/to-private", "/private"]
    assert "authorization" not in Handler.seen[-1]


def test_the_environments_proxy_is_used(http_url, monkeypatch):
    monkeypatch.setenv("http_proxy", http_url)  # this server answers proxy requests too
    code, body = health.probe("http://health.invalid/api/health", 2)
    assert code == 200 and health.reported_version(body) == "via-proxy"
    assert Handler.seen[-1]["path"] == "http://health.invalid/api/health"


def test_an_untrusted_certificate_is_refused(tmp_path):
    crt, key = cert(tmp_path, "127.0.0.1", "127.0.0.1")
    for url in tls_server(crt, key):
        code, reason = health.probe(url + "/api/health", 2)
        assert code is None and b"CERTIFICATE_VERIFY_FAILED" in reason
    assert Handler.seen == []


def test_a_trusted_certificate_for_the_host_is_accepted_and_for_another_name_refused(tmp_path, monkeypatch):
    good, good_key = cert(tmp_path, "127.0.0.1", "127.0.0.1")
    other, other_key = cert(tmp_path, "other.example", "other.example")
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(good.read_bytes() + other.read_bytes())
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))  # the system's CAs, as the host would have them
    for url in tls_server(good, good_key):
        code, body = health.probe(url + "/api/health", 2)
        assert code == 200 and health.reported_version(body) == "2.0.0"
    monkeypatch.setattr(health, "_OPENER", None)
    for url in tls_server(other, other_key):
        code, reason = health.probe(url + "/api/health", 2)
        assert code is None and b"CERTIFICATE_VERIFY_FAILED" in reason and b"127.0.0.1" in reason
