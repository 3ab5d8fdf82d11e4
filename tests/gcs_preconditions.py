"""GCS preconditions for tests: gcp-storage-emulator ignores `ifGenerationMatch` on uploads, deletes
and reads, so this reverse proxy in front of it checks that parameter exactly as GCS documents it
(412 conditionNotMet on a mismatch) while every byte is still stored and served by the emulator."""

from __future__ import annotations

import contextlib
import email.parser
import http.client
import http.server
import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

from tests.gcs_emulator import gcsfs_on, running_emulator

UPSTREAM_TIMEOUT = 30.0
# Framing the proxy recomputes, and hop-by-hop headers (RFC 9110 7.6.1), never forwarded.
_NOT_FORWARDED = frozenset(
    "connection keep-alive proxy-connection te trailer transfer-encoding upgrade content-length "
    "expect".split()
)
# Object names are URL-encoded in the path (a '/' in a name is %2F), so one segment is one object.
_OBJECT = re.compile(r"^(?:/download)?/storage/v1/b/(?P<bucket>[^/]+)/o/(?P<object>[^/]+)$")
_UPLOAD = re.compile(r"^/upload/storage/v1/b/(?P<bucket>[^/]+)/o$")
_PRECONDITION_FAILED = "At least one of the pre-conditions you specified did not hold."


class _Refusal(Exception):
    """An answer the proxy gives itself instead of forwarding: status, GCS reason, message."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


class _PreconditionProxy(http.server.ThreadingHTTPServer):
    """Forwards every request to `upstream` unchanged, but answers 412 to one whose
    ifGenerationMatch does not equal the object's current generation (0: it must not exist).
    Any other precondition, or ifGenerationMatch on a request that names no single object (copy,
    compose, rewrite), is answered 400 rather than ignored; the parts of a batch are not seen."""

    daemon_threads = True

    def __init__(self, upstream: str):
        super().__init__(("127.0.0.1", 0), _Handler)
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        # Held by every request that may change an object, and by every conditional request for
        # its whole check-and-forward: two conditional writes cannot both see the old generation.
        self.lock = threading.Lock()
        self.sessions: dict[str, tuple[str, str]] = {}  # resumable upload_id -> (bucket, object)
        self.connections: set[socket.socket] = set()

    def process_request_thread(self, request, client_address) -> None:
        self.connections.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.discard(request)

    def server_close(self) -> None:
        """Stop listening, and end the idle keep-alive connections clients still hold."""
        super().server_close()
        for connection in list(self.connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def send(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes | None):
        """One request to the emulator on a fresh connection: (status, reason, headers, body)."""
        conn = http.client.HTTPConnection(*self.upstream, timeout=UPSTREAM_TIMEOUT)
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            return response.status, response.reason, response.getheaders(), response.read()
        finally:
            conn.close()

    def generation(self, bucket: str, name: str) -> int:
        """The object's current generation as the emulator stores it; 0 when it does not exist."""
        target = f"/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"
        host = [("Host", "{}:{}".format(*self.upstream))]
        status, _, _, body = self.send("GET", target, host, None)
        if status == 404:
            return 0
        if status != 200:
            raise _Refusal(
                502,
                "backendError",
                f"looking up the generation of gs://{bucket}/{name} for "
                f"ifGenerationMatch, the emulator answered {status}: {body[:300]!r}",
            )
        return int(json.loads(body)["generation"])


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as gcsfs's aiohttp session expects
    timeout = 60  # an idle keep-alive connection is closed after this many seconds
    server: _PreconditionProxy

    def log_message(self, format, *args) -> None:
        """Quiet: the emulator's log already has a line a request."""

    def _handle(self) -> None:
        body = self._read_body()
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        try:
            target = self._target(url.path, query, body)
            wanted = self._wanted_generation(url.path, query, target)
            if wanted is None and self.command in ("GET", "HEAD"):
                response = self._forward(body)
            else:
                with self.server.lock:
                    if wanted is not None and self.server.generation(*target) != wanted:
                        raise _Refusal(412, "conditionNotMet", _PRECONDITION_FAILED)
                    response = self._forward(body)
        except _Refusal as refusal:
            response = _gcs_error(refusal)
        self._remember_session(query, target, response)
        self._reply(*response)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _target(self, path: str, query: dict, body: bytes) -> tuple[str, str] | None:
        """The (bucket, object name) a request reads or changes, when it is one object."""
        if (match := _OBJECT.match(path)) and self.command != "POST":
            return match["bucket"], unquote(match["object"])
        if (match := _UPLOAD.match(path)) and self.command in ("POST", "PUT"):
            if "upload_id" in query:  # a later request of a resumable session
                return self.server.sessions.get(query["upload_id"][0])
            name = query.get("name", [None])[0] or _name_in_body(
                query.get("uploadType", [""])[0], self.headers.get("Content-Type", ""), body
            )
            return (match["bucket"], name) if name else None
        return None

    def _wanted_generation(self, path: str, query: dict, target) -> int | None:
        unsupported = sorted(k for k in query if k.startswith("if") and k != "ifGenerationMatch")
        if unsupported or ("ifGenerationMatch" in query and target is None):
            # 400, not 501: gcsfs retries 5xx answers for half a minute.
            raise _Refusal(
                400,
                "notCheckedByStandIn",
                f"this stand-in enforces only ifGenerationMatch, on "
                f"uploads and object GET/PUT/PATCH/DELETE; got {unsupported or 'ifGenerationMatch'}"
                f" on {self.command} {path}; extend tests/gcs_preconditions.py to check it",
            )
        if "ifGenerationMatch" not in query:
            return None
        value = query["ifGenerationMatch"][0]
        if not value.isdigit():
            raise _Refusal(
                400, "invalid", f"ifGenerationMatch must be a non-negative integer, got {value!r}"
            )
        return int(value)

    def _forward(self, body: bytes):
        # Host goes through unchanged: the emulator builds resumable session URLs from it, so
        # the later requests of a session come back through this proxy.
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _NOT_FORWARDED]
        framed = "Content-Length" in self.headers or "Transfer-Encoding" in self.headers
        return self.server.send(self.command, self.path, headers, body if framed else None)

    def _remember_session(self, query: dict, target, response) -> None:
        """A resumable upload's later requests name only the session: note its object."""
        status, _, headers, _ = response
        location = dict((k.lower(), v) for k, v in headers).get("location", "")
        session = parse_qs(urlsplit(location).query).get("upload_id")
        if query.get("uploadType") == ["resumable"] and status == 200 and session and target:
            self.server.sessions[session[0]] = target

    def _reply(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes):
        self.send_response_only(status, reason)
        for name, value in headers:
            # A HEAD answer has no body but says how long the GET body would be.
            if name.lower() not in _NOT_FORWARDED or (
                self.command == "HEAD" and name.lower() == "content-length"
            ):
                self.send_header(name, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _name_in_body(upload_type: str, content_type: str, body: bytes) -> str | None:
    """The object name in a multipart upload's JSON part or a resumable initiation's JSON body."""
    try:
        if upload_type == "multipart" and content_type.startswith("multipart/"):
            head = f"Content-Type: {content_type}\r\n\r\n".encode()
            metadata = email.parser.BytesParser().parsebytes(head + body).get_payload()[0]
            return json.loads(metadata.get_payload())["name"]
        if upload_type == "resumable" and body:
            return json.loads(body)["name"]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
    return None


def _gcs_error(refusal: _Refusal):
    """An error response shaped like GCS's JSON API errors (gcsfs maps 412 to FileExistsError)."""
    message = "Precondition Failed" if refusal.status == 412 else refusal.message
    error = {"domain": "global", "reason": refusal.reason, "message": refusal.message}
    if refusal.status == 412:
        error.update(locationType="header", location="If-Match")
    body = json.dumps({"error": {"code": refusal.status, "message": message, "errors": [error]}})
    headers = [("Content-Type", "application/json; charset=UTF-8")]
    return refusal.status, http.HTTPStatus(refusal.status).phrase, headers, body.encode()


@contextlib.contextmanager
def running_emulator_with_preconditions(log_path: Path) -> Iterator[str]:
    """An in-memory emulator (its output in `log_path`) behind the precondition proxy; yields the
    proxy's endpoint (the value for STORAGE_EMULATOR_HOST) and stops both on exit."""
    with running_emulator(log_path) as upstream:
        proxy = _PreconditionProxy(upstream)
        thread = threading.Thread(
            target=proxy.serve_forever, args=(0.05,), name="gcs-preconditions-proxy", daemon=True
        )
        thread.start()
        try:
            yield f"http://127.0.0.1:{proxy.server_address[1]}"
        finally:
            proxy.shutdown()
            proxy.server_close()
            thread.join(timeout=10)


@pytest.fixture(scope="module")
def gcs_cas(tmp_path_factory):
    """Like the `gcs` fixture of tests/zephyr/test_io_gcs.py (a gcsfs filesystem holding an empty
    bucket `bucket`, the environment pointing gs:// at it) but GCS preconditions hold: a write or
    delete with a stale ifGenerationMatch raises FileExistsError. A test module binds it with
    `gcs_cas = gcs_preconditions.gcs_cas` (an import would trip ruff's F811 on every use)."""
    log_path = tmp_path_factory.mktemp("gcs-emulator") / "emulator.log"
    with running_emulator_with_preconditions(log_path) as endpoint, gcsfs_on(endpoint) as fs:
        yield fs
