"""Tests for attn_lightning.data.download against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from attn_lightning.data.download import DatasetUnavailableError, fetch_verified, sha256_of

PAYLOAD = bytes(range(256)) * 16  # 4 KiB, not valid UTF-8, exercises binary handling
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
WRONG_SHA = "0" * 64


@dataclass
class Server:
    """A running local server plus a log of the paths it was asked for."""

    base_url: str
    requests: list[str] = field(default_factory=list)
    httpd: ThreadingHTTPServer | None = None

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server(base_url="")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            srv.requests.append(self.path)
            if self.path == "/good":
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                self.wfile.write(PAYLOAD)
            elif self.path == "/truncated":
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
                self.wfile.flush()
                self.close_connection = True
            else:
                body = b"not found"
                self.send_response(404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    srv.httpd = httpd
    host, port = httpd.server_address[:2]
    srv.base_url = f"http://{host}:{port}"
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield srv
    finally:
        srv.stop()
        thread.join(timeout=5)


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that was bound and then closed, so connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sha256_of_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(PAYLOAD * 40)  # larger than one read chunk
    assert sha256_of(path) == hashlib.sha256(PAYLOAD * 40).hexdigest()


def test_good_download_then_cached_without_network(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "tinyshakespeare.txt"
    result = fetch_verified(server.url("/good"), dest, PAYLOAD_SHA, timeout=5)

    assert result == dest
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.parent.iterdir()) == ["tinyshakespeare.txt"]
    assert server.requests == ["/good"]

    # With the server gone, a second call must succeed from the verified local copy.
    server.stop()
    again = fetch_verified(server.url("/good"), dest, PAYLOAD_SHA.upper(), timeout=1)
    assert again == dest
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == ["/good"]


def test_bad_checksum_leaves_nothing(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "tinyshakespeare.txt"
    url = server.url("/good")
    with pytest.raises(DatasetUnavailableError) as info:
        fetch_verified(url, dest, WRONG_SHA, timeout=5)

    msg = str(info.value)
    assert url in msg
    assert str(dest) in msg
    assert "sha256" in msg
    assert WRONG_SHA in msg and PAYLOAD_SHA in msg
    assert info.value.__cause__ is not None
    assert list(tmp_path.iterdir()) == []


def test_truncated_body_is_rejected(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "tinyshakespeare.txt"
    url = server.url("/truncated")
    with pytest.raises(DatasetUnavailableError) as info:
        # The correct digest: only the length check can catch this.
        fetch_verified(url, dest, PAYLOAD_SHA, timeout=5)

    msg = str(info.value)
    assert url in msg
    assert str(dest) in msg
    assert f"{len(PAYLOAD) // 2} of {len(PAYLOAD)} bytes" in msg
    assert list(tmp_path.iterdir()) == []


def test_http_404(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "tinyshakespeare.txt"
    url = server.url("/missing")
    with pytest.raises(DatasetUnavailableError) as info:
        fetch_verified(url, dest, PAYLOAD_SHA, timeout=5)

    msg = str(info.value)
    assert "404" in msg
    assert url in msg
    assert info.value.__cause__ is not None
    assert list(tmp_path.iterdir()) == []


def test_unreachable_host(closed_port: int, tmp_path: Path) -> None:
    dest = tmp_path / "tinyshakespeare.txt"
    url = f"http://127.0.0.1:{closed_port}/good"
    with pytest.raises(DatasetUnavailableError) as info:
        fetch_verified(url, dest, PAYLOAD_SHA, timeout=2)

    msg = str(info.value)
    assert url in msg
    assert str(dest) in msg
    assert "refused" in msg
    assert list(tmp_path.iterdir()) == []


def test_existing_file_with_wrong_checksum_is_left_untouched(
    server: Server, tmp_path: Path
) -> None:
    dest = tmp_path / "tinyshakespeare.txt"
    user_content = b"my own edited copy\n"
    dest.write_bytes(user_content)

    with pytest.raises(DatasetUnavailableError) as info:
        fetch_verified(server.url("/good"), dest, PAYLOAD_SHA, timeout=5)

    msg = str(info.value)
    assert str(dest) in msg
    assert "corrupt" in msg or "modified" in msg
    assert PAYLOAD_SHA in msg
    assert hashlib.sha256(user_content).hexdigest() in msg
    assert "delete" in msg.lower()
    assert dest.read_bytes() == user_content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tinyshakespeare.txt"]
    assert server.requests == []  # never touched the network


def test_error_message_names_the_remedies(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "tinyshakespeare.txt"
    with pytest.raises(DatasetUnavailableError) as info:
        fetch_verified(server.url("/missing"), dest, PAYLOAD_SHA, timeout=5)

    msg = str(info.value)
    assert "data.path" in msg
    assert "ATTN_LIGHTNING_DATA_DIR" in msg
    assert str(dest) in msg  # "download it yourself to that exact path"
    assert isinstance(info.value, RuntimeError)
