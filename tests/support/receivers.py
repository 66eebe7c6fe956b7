"""Real servers that notifications are sent to in the tests: an HTTP(S) receiver (webhooks, Slack), a server that
takes connections and never answers, an SMTP server (aiosmtpd) with STARTTLS and AUTH, and the certificates
they present (a throwaway CA made with `cryptography`)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when it arrived

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpReceiver:
    """Answers each POST with the next of `statuses` (the last one repeats), after `delay` seconds, and once `gate`
    (if any) is set: a delivery stays in flight for as long as a test wants (10 s at most)."""

    url: str
    statuses: list[int] = field(default_factory=lambda: [200])
    delay: float = 0.0
    answer_body: bytes = b"ok"
    location: str | None = None  # the Location header of a 3xx answer
    trickle: float | None = None  # answer with a header line that gains a byte every `trickle` seconds, forever
    gate: threading.Event | None = None
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_status(self) -> int:
        with self.lock:
            index = min(len(self.requests), len(self.statuses) - 1)
            return self.statuses[index]

    def received(self) -> list[Received]:
        with self.lock:
            return list(self.requests)


@contextmanager
def http_receiver(
    path: str = "/hook", *, tls: ssl.SSLContext | None = None, host_in_url: str = "127.0.0.1", **options: Any
) -> Iterator[HttpReceiver]:
    """An HTTP server on 127.0.0.1 in a thread (HTTPS with `tls`); `url` is where to POST."""
    receiver: HttpReceiver | None = None

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server's hook name
            assert receiver is not None
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status = receiver.next_status()
            with receiver.lock:
                receiver.requests.append(Received(self.path, dict(self.headers.items()), body, time.monotonic()))
            if receiver.delay:
                time.sleep(receiver.delay)
            if receiver.gate is not None:
                receiver.gate.wait(10)
            if receiver.trickle is not None:
                self.trickle_forever(receiver.trickle)
                return
            self.send_response(status)
            if receiver.location and 300 <= status < 400:
                self.send_header("Location", receiver.location)
            self.send_header("Content-Length", str(len(receiver.answer_body)))
            self.end_headers()
            self.wfile.write(receiver.answer_body)

        def trickle_forever(self, every: float) -> None:
            try:
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while True:
                    self.wfile.flush()
                    time.sleep(every)
                    self.wfile.write(b"x")
            except OSError:  # the client gave up
                self.close_connection = True

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    scheme = "https" if tls is not None else "http"
    receiver = HttpReceiver(url=f"{scheme}://{host_in_url}:{server.server_port}{path}", **options)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def silent_server() -> Iterator[int]:
    """A port that takes connections (the kernel completes the handshake) and never says a word; yields it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


@contextmanager
def trickling_server(first: bytes, *, every: float = 0.1) -> Iterator[int]:
    """A port whose server answers each connection with `first`, then one more byte every `every` seconds,
    never finishing (a header line or an SMTP greeting that never ends); yields the port."""
    stop = threading.Event()

    def trickle(connection: socket.socket) -> None:
        with connection:
            try:
                connection.sendall(first)
                while not stop.wait(every):
                    connection.sendall(b"x")
            except OSError:  # the client gave up and closed
                pass

    def serve(listener: socket.socket) -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=trickle, args=(connection,), daemon=True).start()

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        threading.Thread(target=serve, args=(listener,), daemon=True).start()
        try:
            yield listener.getsockname()[1]
        finally:
            stop.set()
            listener.shutdown(socket.SHUT_RDWR)


# -- certificates -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    ca_file: Path  # what clients trust (RIME_ALERT_CA_FILE)
    cert_file: Path  # the server's, for localhost and 127.0.0.1
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def make_certificates(folder: Path) -> Certificates:
    """A throwaway CA and a server certificate it signed, for `localhost` and 127.0.0.1."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Rime test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    certificates = Certificates(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    certificates.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    certificates.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    certificates.key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certificates


# -- SMTP ---------------------------------------------------------------------------------------------


@dataclass
class SmtpServer:
    host: str
    port: int
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)  # user names that authenticated
    tls_sessions: int = 0  # MAIL transactions made over TLS


@contextmanager
def smtp_server(*, tls: ssl.SSLContext | None, credentials: tuple[str, str] | None = None) -> Iterator[SmtpServer]:
    """An aiosmtpd server on 127.0.0.1 in a thread: STARTTLS with `tls` (then required), AUTH (PLAIN/LOGIN,
    over TLS only) with `credentials`; it keeps every message it accepts."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = SmtpServer("127.0.0.1", port)

    class Handler:
        async def handle_DATA(self, _server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's hook name
            server.messages.append(message_from_bytes(envelope.content, policy=policy.default))  # type: ignore[arg-type]
            server.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            if session.ssl is not None:
                server.tls_sessions += 1
            return "250 Message accepted for delivery"

    def authenticate(_server: Any, _session: Any, _envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        del mechanism
        assert credentials is not None
        login, password = auth_data.login.decode(), auth_data.password.decode()
        if (login, password) == credentials:
            server.logins.append(login)
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    options: dict[str, Any] = {}
    if tls is not None:
        options.update(tls_context=tls, require_starttls=True)
    if credentials is not None:
        options.update(authenticator=authenticate, auth_require_tls=True, auth_required=True)
    controller = Controller(Handler(), hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield server
    finally:
        controller.stop()
