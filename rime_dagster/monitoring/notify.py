"""Sends alert notifications to a channel: a webhook (signed JSON), a Slack incoming webhook (blocks) or an
SMTP mailbox (STARTTLS, AUTH). One call sends one message; the outbox (delivery.py) retries.

Webhooks. A JSON POST of `{type, alert, project, rule, delivery_id, sent_at}` (and `escalation_step` for an
escalation) with the headers

    X-Rime-Timestamp: <unix seconds>
    X-Rime-Delivery:  <delivery id; the same on every retry of one delivery: dedupe on it>
    X-Rime-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<raw body>", keyed with the channel's secret>

(the signature only when the channel has a secret). A receiver recomputes the HMAC over the timestamp header, a
dot and the raw body bytes, compares it in constant time, and rejects a timestamp more than a few minutes from
its own clock: a captured request cannot be replayed later, and the body cannot be changed (the scheme of
Stripe's and Slack's signatures). In Python:

    signed = timestamp.encode() + b"." + raw_body
    expected = "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest(expected, signature_header) and abs(time.time() - int(timestamp)) < 300

A 2xx answer is delivered; redirects are not followed (a 3xx fails).

How long a send takes. RIME_ALERT_DELIVERY_TIMEOUT_SECONDS bounds each connect and each wait for an answer, and
a Deadline ends a whole send after 3 of them (webhook, Slack) or 4 (SMTP), however the server trickles its answer.

Where messages go. The host of a URL (or an SMTP server) is resolved at send time and refused when any of its
addresses is in RIME_CONNECTOR_HOSTS_DENY, as connector hosts are; the connection then goes to the address that
was checked (the Host header and TLS server name stay the URL's host), so a DNS answer that changes between the
check and the connection (DNS rebinding) cannot lead elsewhere. Proxy variables of the environment are ignored.

What is never shown. A channel's secrets (the webhook secret, the Slack URL, whose path is its token, and the
SMTP password) never appear in a DeliveryFailed message, which is stored and shown by the API, nor in logs.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import html
import json
import logging
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import TYPE_CHECKING, Any

import certifi
import httpx
from sqlalchemy.orm import object_session

from rime_dagster.store.crypto import CredentialCipher, CredentialsUnreadable
from rime_dagster.store.models import NotificationChannel, Project

if TYPE_CHECKING:
    from rime_dagster.settings import Settings

log = logging.getLogger(__name__)
# httpx logs every request's full URL at INFO, and a Slack incoming-webhook URL is a credential: wherever this
# module sends (the code location's sensors, the API's channel test), that line is never written.
logging.getLogger("httpx").setLevel(logging.WARNING)

CHANNEL_TYPES = ("webhook", "slack", "email")
# The config keys each type keeps encrypted (NotificationChannel.secrets_encrypted), never shown.
SECRET_KEYS: dict[str, tuple[str, ...]] = {"webhook": ("secret",), "slack": ("url",), "email": ("password",)}
KINDS = ("alert_fired", "alert_escalated", "alert_acknowledged", "alert_resolved", "test")
USER_AGENT = "Rime-Alerts/1.0"
# How much of a refusing receiver's answer a failure message quotes (Slack says why: `invalid_token`, ...).
_QUOTED_BYTES = 200
_SEVERITY_MARK = {"critical": "🔴", "high": "🟠", "medium": "🟡", "low": "🔵", "info": "⚪"}


@dataclass(frozen=True)
class Notification:
    kind: str  # one of KINDS
    alert: dict[str, Any] | None  # rime_dagster.monitoring.alerts.alert_payload(alert); None for "test"
    project: dict[str, str]  # {"id", "name"}
    rule: dict[str, str] | None  # {"id", "name"}
    delivery_id: str | None  # AlertDelivery.id (None for "test"): receivers dedupe on it
    escalation_step: int | None = None


class DeliveryFailed(Exception):
    """A message was not delivered; the message says why and is safe to store and show (no secret, no token)."""


def split_channel_config(channel_type: str, config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the config to store and show, the secrets to encrypt). A Slack incoming-webhook URL is a credential
    (its path is the token): the shown config keeps a redacted form of it."""
    secret_keys = SECRET_KEYS.get(channel_type, ())
    public = {key: value for key, value in config.items() if key not in secret_keys}
    secrets = {key: config[key] for key in secret_keys if config.get(key) not in (None, "")}
    if channel_type == "slack" and "url" in secrets:
        public["url"] = redact_url(str(secrets["url"]))
    return public, secrets


def redact_url(url: str) -> str:
    """`https://hooks.slack.com/services/T0/B0/XYZ` -> `https://hooks.slack.com/services/***`: the scheme,
    host and first path segment, never the rest (nor a query, nor user info)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "***"
    if not parsed.scheme or not parsed.host:
        return "***"
    segments = [segment for segment in parsed.path.split("/") if segment]
    kept = f"/{segments[0]}" if len(segments) > 1 else ""
    port = f":{parsed.port}" if parsed.port else ""
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    return f"{parsed.scheme}://{host}{port}{kept}/***"


def send(
    channel_type: str,
    config: Mapping[str, Any],
    secrets: Mapping[str, Any],
    notification: Notification,
    *,
    settings: Settings,
) -> str:
    """Sends one message; returns a short outcome ("HTTP 200", "250 OK ..."); DeliveryFailed otherwise."""
    senders = {"webhook": _send_webhook, "slack": _send_slack, "email": _send_email}
    sender = senders.get(channel_type)
    if sender is None:
        raise DeliveryFailed(f"Unknown channel type '{channel_type}'.")
    hidden = [str(value) for value in secrets.values() if value]
    try:
        return sender(config, secrets, notification, settings)
    except DeliveryFailed as exc:
        raise DeliveryFailed(scrub(str(exc), hidden)) from None


def send_test(channel: NotificationChannel, *, settings: Settings) -> tuple[bool, str]:
    """Sends a real "test" message to `channel` (its secrets decrypted); (success, message to show)."""
    try:
        secrets = decrypt_secrets(channel, settings)
    except CredentialsUnreadable as exc:
        return False, str(exc)
    session = object_session(channel)
    project = session.get(Project, channel.project_id) if session is not None else None
    notification = Notification(
        kind="test",
        alert=None,
        project={"id": channel.project_id, "name": project.name if project is not None else channel.project_id},
        rule=None,
        delivery_id=None,
    )
    try:
        outcome = send(channel.channel_type, channel.config, secrets, notification, settings=settings)
    except DeliveryFailed as exc:
        return False, str(exc)
    except Exception as exc:  # the API answers {success: false}, never a 500, whatever went wrong
        log.error("test message to channel %s: unexpected %s", channel.id, type(exc).__name__)
        return False, scrub(f"Unexpected error: {type(exc).__name__}: {exc}", map(str, secrets.values()))
    return True, f"Test message delivered ({outcome})."


def decrypt_secrets(channel: NotificationChannel, settings: Settings) -> dict[str, Any]:
    """The channel's secrets; CredentialsUnreadable when the secret key changed since they were set."""
    if not channel.secrets_encrypted:
        return {}
    return CredentialCipher.from_settings(settings).decrypt(channel.secrets_encrypted)


def scrub(message: str, hidden: Iterable[str]) -> str:
    """`message` with every hidden value (a secret, a Slack URL and its path) replaced by ***."""
    for value in sorted(_hidden_forms(hidden), key=len, reverse=True):
        message = message.replace(value, "***")
    return message


def _hidden_forms(hidden: Iterable[str]) -> set[str]:
    forms = set()
    for value in hidden:
        if len(value) < 4:  # too short to hide without mangling the message; not a real secret anyway
            continue
        forms.add(value)
        try:
            path = httpx.URL(value).path
        except (httpx.InvalidURL, TypeError):
            continue
        if len(path) > 1:
            forms.add(path)
    return forms


# -- what is sent -----------------------------------------------------------------------------------


def _sent_at(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def webhook_body(notification: Notification, timestamp: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": notification.kind,
        "alert": notification.alert,
        "project": notification.project,
        "rule": notification.rule,
        "delivery_id": notification.delivery_id,
        "sent_at": _sent_at(timestamp),
    }
    if notification.escalation_step is not None:
        body["escalation_step"] = notification.escalation_step
    return body


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Rime-Signature header's value: `sha256=` + hex HMAC-SHA256 of `<timestamp>.<body>`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def headline(notification: Notification) -> str:
    """One line: what happened to which alert (the Slack fallback text, the email subject)."""
    if notification.alert is None:
        return f"Test notification from Rime (project {notification.project.get('name')})"
    alert = notification.alert
    severity = str(alert.get("severity", "")).upper()
    what = {
        "alert_fired": "Alert",
        "alert_escalated": f"Escalated (step {notification.escalation_step})",
        "alert_acknowledged": "Acknowledged",
        "alert_resolved": "Resolved",
    }.get(notification.kind, notification.kind)
    return f"[{severity}] {what}: {alert.get('title', '')}"


def _details(notification: Notification) -> list[tuple[str, str]]:
    """(label, value) pairs shown by Slack and email."""
    alert = notification.alert or {}
    pairs = [
        ("Severity", str(alert.get("severity", ""))),
        ("Status", str(alert.get("status", ""))),
        ("Project", notification.project.get("name", "")),
        ("Rule", (notification.rule or {}).get("name", "")),
        ("Target", str(alert.get("target", ""))),
        ("Fired at", str(alert.get("fired_at", ""))),
    ]
    return [(label, value) for label, value in pairs if value]


def _test_text(notification: Notification) -> str:
    return (
        f"This is a test message from Rime for project {notification.project.get('name')}: "
        "this channel receives the project's alerts."
    )


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(notification: Notification) -> dict[str, Any]:
    """An incoming webhook's message: `text` for notifications and old clients, `blocks` for the message."""
    text = headline(notification)
    mark = _SEVERITY_MARK.get(str((notification.alert or {}).get("severity")), "🔔")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"{mark} {text}"[:150], "emoji": True}}
    ]
    if notification.alert is None:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _slack_escape(_test_text(notification))}})
        return {"text": _slack_escape(text), "blocks": blocks}
    fields = [
        {"type": "mrkdwn", "text": f"*{label}*\n{_slack_escape(value)}"[:2000]}
        for label, value in _details(notification)
    ]
    blocks.append({"type": "section", "fields": fields[:10]})
    message = str(notification.alert.get("message") or "")
    if message:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _slack_escape(message)[:3000]}})
    url = notification.alert.get("dagster_url")
    if url:
        button = {"type": "button", "text": {"type": "plain_text", "text": "Open the run in Dagster"}, "url": url}
        blocks.append({"type": "actions", "elements": [button]})
    return {"text": _slack_escape(text), "blocks": blocks}


def email_message(notification: Notification, *, sender: str, recipients: list[str]) -> EmailMessage:
    """Plain text, with a simple HTML alternative."""
    message = EmailMessage()
    message["Subject"] = " ".join(f"[Rime] {headline(notification)}".split())[:250]  # one line, whatever the title
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    if notification.delivery_id:
        message["X-Rime-Delivery"] = notification.delivery_id
    alert = notification.alert
    if alert is None:
        body = _test_text(notification)
        message.set_content(body + "\n")
        message.add_alternative(f"<p>{html.escape(body)}</p>\n", subtype="html")
        return message
    details = _details(notification)
    url = alert.get("dagster_url")
    lines = [str(alert.get("title", "")), "", str(alert.get("message") or ""), ""]
    lines += [f"{label}: {value}" for label, value in details]
    if url:
        lines += ["", f"Run in Dagster: {url}"]
    message.set_content("\n".join(lines) + "\n")
    rows = "".join(f"<tr><th align='left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in details)
    link = f"<p><a href='{html.escape(url, quote=True)}'>Open the run in Dagster</a></p>" if url else ""
    message.add_alternative(
        f"<h2>{html.escape(str(alert.get('title', '')))}</h2>"
        f"<p>{html.escape(str(alert.get('message') or ''))}</p><table>{rows}</table>{link}\n",
        subtype="html",
    )
    return message


# -- HTTP -------------------------------------------------------------------------------------------

# A whole send (every connection, wait and answer of it) ends after this many timeouts: the timeout bounds each
# wait, not a server that answers a byte at a time. Below the outbox's claim (delivery.lease).
HTTP_DEADLINE_TIMEOUTS = 3
SMTP_DEADLINE_TIMEOUTS = 4


class Deadline:
    """Ends a send that runs past `seconds` in all: a timer shuts the watched socket down, which wakes a read
    blocked on it at once (the reader then fails as on a dropped connection, and `expired` says why).

    Once it is done (`with` left) it touches no socket. While it runs, a socket it shuts down may be being
    closed by the sending thread: socket.socket then has no descriptor (OSError, ignored)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._done = False
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        with self._lock:
            self._done, self._socket = True, None
        self._timer.cancel()

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._socket = sock
            if self.expired and not self._done:
                _shut(sock)

    def trace(self, event_name: str, info: Mapping[str, Any]) -> None:
        """httpcore's trace hook: watches each socket it connects, then the TLS socket that takes its place."""
        if event_name in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            self.watch(info["return_value"].get_extra_info("socket"))

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if not self._done:
                _shut(self._socket)


def _shut(sock: socket.socket | None) -> None:
    # socket.socket's own shutdown, also for a TLS socket: ssl.SSLSocket.shutdown would unwrap it under the
    # reading thread's feet. A socket closed meanwhile has no descriptor any more: OSError, nothing to do.
    if sock is None:
        return
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


@functools.lru_cache(maxsize=8)
def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The public CAs (certifi, as httpx uses by default) and RIME_ALERT_CA_FILE's, hostnames checked."""
    context = ssl.create_default_context(cafile=certifi.where())
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def _tls(settings: Settings) -> ssl.SSLContext:
    return tls_context(str(settings.alert_ca_file) if settings.alert_ca_file else None)


def checked_addresses(host: str, port: int, settings: Settings, *, field: str) -> list[str | None]:
    """The addresses to connect to, each outside RIME_CONNECTOR_HOSTS_DENY ([None]: no deny list, the client
    resolves the name); DeliveryFailed when an address is denied or the name does not resolve."""
    # Imported here: the sources package pulls in pyarrow, which loading the code location must not pay for.
    from rime_dagster.connectors.sources._access import SourceAccess
    from rime_dagster.connectors.sources.base import AccessRefused

    access = SourceAccess(hosts_deny=tuple(settings.connector_hosts_deny))
    try:
        addresses = access.addresses(host, port, field=field)
    except AccessRefused as exc:
        raise DeliveryFailed(str(exc)) from None
    if addresses is None:
        return [None]
    if not addresses:
        raise DeliveryFailed(f"Host '{host}' does not resolve.")
    return list(addresses)


def post_json(url: str, payload: Mapping[str, Any], headers: Mapping[str, str], settings: Settings) -> str:
    """POSTs `payload` as compact JSON (see `post`)."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return post(url, body, headers, settings)


def post(url: str, body: bytes, headers: Mapping[str, str], settings: Settings) -> str:
    """POSTs `body` to `url` at a checked address; "HTTP <status>" for a 2xx, DeliveryFailed otherwise.
    Messages name the scheme, host and port only (a URL's path may hold a token)."""
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise DeliveryFailed("The channel's URL is not a valid URL.") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise DeliveryFailed("The channel's URL must be an http:// or https:// URL.")
    port = target.port or (443 if target.scheme == "https" else 80)
    where = f"{target.scheme}://{target.host}:{port}"
    addresses = checked_addresses(target.host, port, settings, field="url")
    timeout = settings.alert_delivery_timeout_seconds
    request_headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Host": target.netloc.decode("ascii"),
        **headers,
    }
    deadline = Deadline(HTTP_DEADLINE_TIMEOUTS * timeout)
    with (
        httpx.Client(
            timeout=httpx.Timeout(timeout), follow_redirects=False, trust_env=False, verify=_tls(settings)
        ) as client,
        deadline,
    ):
        for index, address in enumerate(addresses):
            extensions: dict[str, Any] = {"trace": deadline.trace}
            if target.scheme == "https":
                extensions["sni_hostname"] = target.host
            request = client.build_request(
                "POST",
                target.copy_with(host=address) if address else target,
                content=body,
                headers=request_headers,
                extensions=extensions,
            )
            try:
                return _answer(client.send(request, stream=True), where, deadline)
            except httpx.ConnectError as exc:  # refused or unreachable: fast, so try the name's next address
                if index == len(addresses) - 1 or deadline.expired:
                    raise DeliveryFailed(f"Could not connect to {where}: {_reason(exc)}.") from None
            except httpx.TimeoutException:
                raise DeliveryFailed(f"{where} did not answer within {timeout:g} s.") from None
            except httpx.HTTPError as exc:
                if deadline.expired:
                    raise DeliveryFailed(f"{where} did not finish answering within {deadline.seconds:g} s.") from None
                raise DeliveryFailed(f"Sending to {where} failed: {_reason(exc)}.") from None
    raise DeliveryFailed(f"Could not connect to {where}.")  # no addresses: checked_addresses raised already


def _answer(response: httpx.Response, where: str, deadline: Deadline) -> str:
    try:
        status = response.status_code
        if 200 <= status < 300:
            return f"HTTP {status}"
        if 300 <= status < 400:
            raise DeliveryFailed(f"HTTP {status} from {where}: redirects are not followed.")
        quoted = "" if deadline.expired else _first_bytes(response).decode("utf-8", "replace").strip()
        said = f": {quoted[:_QUOTED_BYTES]}" if quoted else ""
        raise DeliveryFailed(f"HTTP {status} from {where}{said}")
    finally:
        response.close()


def _first_bytes(response: httpx.Response) -> bytes:
    received = b""
    try:
        for chunk in response.iter_bytes():
            received += chunk
            if len(received) >= _QUOTED_BYTES:
                break
    except httpx.HTTPError:
        pass
    return received[:_QUOTED_BYTES]


def _reason(exc: BaseException) -> str:
    """What went wrong, without a URL: the innermost OS or TLS error's text."""
    reason = str(exc) or type(exc).__name__
    return reason.rstrip(".")


def _send_webhook(
    config: Mapping[str, Any], secrets: Mapping[str, Any], notification: Notification, settings: Settings
) -> str:
    url = config.get("url")
    if not url:
        raise DeliveryFailed("The webhook channel has no URL.")
    timestamp = int(time.time())
    body = json.dumps(webhook_body(notification, timestamp), separators=(",", ":"), ensure_ascii=False).encode()
    headers = {"X-Rime-Timestamp": str(timestamp), "X-Rime-Delivery": notification.delivery_id or "test"}
    secret = secrets.get("secret")
    if secret:
        headers["X-Rime-Signature"] = signature(str(secret), timestamp, body)
    return post(str(url), body, headers, settings)


def _send_slack(
    config: Mapping[str, Any], secrets: Mapping[str, Any], notification: Notification, settings: Settings
) -> str:
    del config  # the URL is the secret
    url = secrets.get("url")
    if not url:
        raise DeliveryFailed("The Slack channel has no incoming-webhook URL.")
    return post_json(str(url), slack_payload(notification), {}, settings)


# -- SMTP -------------------------------------------------------------------------------------------


class _CheckedSMTP(smtplib.SMTP):
    """smtplib's client, connected to an address checked against the deny list; the server's name is still
    what STARTTLS verifies the certificate against."""

    def __init__(self, host: str, port: int, address: str | None, *, timeout: float, deadline: Deadline):
        self._address = address
        self._deadline = deadline
        super().__init__(host, port, local_hostname=socket.gethostname() or "localhost", timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = super()._get_socket(self._address or host, port, timeout)  # type: ignore[misc]
        self._deadline.watch(sock)
        return sock


def _email_route(config: Mapping[str, Any]) -> tuple[str, int, str, list[str]]:
    """(host, port, from address, recipients) of an email channel; DeliveryFailed when they are unusable
    (the API validates them; this guards against a row changed behind its back)."""
    host, port, sender, recipients = (
        config.get("host"),
        config.get("port", 587),
        config.get("from_address"),
        config.get("to"),
    )
    if isinstance(recipients, str):
        recipients = [recipients]
    if not isinstance(host, str) or not host or not isinstance(sender, str) or not sender or not recipients:
        raise DeliveryFailed("The email channel needs host, from_address and to.")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise DeliveryFailed("The email channel's port must be a number from 1 to 65535.")
    if any(not isinstance(address, str) or not address for address in recipients):
        raise DeliveryFailed("The email channel's recipients must be email addresses.")
    return host, port, sender, list(recipients)


def _send_email(
    config: Mapping[str, Any], secrets: Mapping[str, Any], notification: Notification, settings: Settings
) -> str:
    host, port, sender, recipients = _email_route(config)
    username, password = config.get("username"), secrets.get("password")
    starttls = bool(config.get("starttls", True))
    if (username or password) and not starttls:
        raise DeliveryFailed("SMTP credentials are only sent over TLS: turn starttls on for this channel.")
    message = email_message(notification, sender=sender, recipients=recipients)
    where = f"{host}:{port}"
    addresses = checked_addresses(host, port, settings, field="host")
    deadline = Deadline(SMTP_DEADLINE_TIMEOUTS * settings.alert_delivery_timeout_seconds)
    try:
        with deadline, _connect_smtp(host, port, addresses, settings, deadline) as smtp:
            if starttls:  # smtplib refuses (SMTPNotSupportedError) when the server does not offer it
                smtp.starttls(context=_tls(settings))
                deadline.watch(smtp.sock)
                smtp.ehlo()
            if username or password:
                smtp.login(str(username or ""), str(password or ""))
            refused = smtp.send_message(message)
    except OSError as exc:  # smtplib's errors, timeouts, TLS errors and refused connections are all OSErrors
        if deadline.expired:
            raise DeliveryFailed(f"SMTP server {where} did not finish within {deadline.seconds:g} s.") from None
        raise DeliveryFailed(_smtp_reason(exc, where, settings)) from None
    accepted = len(recipients) - len(refused)
    note = f"; refused: {', '.join(sorted(refused))}" if refused else ""
    return f"250 OK: accepted for {accepted} recipient{'s' if accepted != 1 else ''}{note}"


def _connect_smtp(
    host: str, port: int, addresses: list[str | None], settings: Settings, deadline: Deadline
) -> _CheckedSMTP:
    """Connects to the first address that takes the connection (a refused one is quick to try past)."""
    timeout = settings.alert_delivery_timeout_seconds
    for address in addresses[:-1]:
        try:
            return _CheckedSMTP(host, port, address, timeout=timeout, deadline=deadline)
        except OSError as exc:
            if isinstance(exc, TimeoutError | smtplib.SMTPException):  # slow to try again; or it answered
                raise
    return _CheckedSMTP(host, port, addresses[-1], timeout=timeout, deadline=deadline)


def _smtp_reason(exc: BaseException, where: str, settings: Settings) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        said = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return f"SMTP server {where} answered {exc.smtp_code}: {said}"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return f"SMTP server {where} refused every recipient."
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return f"SMTP server {where}: {exc}"
    if isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError):  # smtplib re-raises timeouts
        return f"SMTP server {where} did not answer within {settings.alert_delivery_timeout_seconds:g} s."
    if isinstance(exc, ssl.SSLError):
        return f"TLS with SMTP server {where} failed: {exc}"
    return f"Could not send through SMTP server {where}: {exc}"
