"""Who may use the console, and what a browser may do with its pages.

The console holds a token for the decision server (roles ``decide`` and ``ingest``,
and ``report`` for the results view; never ``admin``); the browser never sees it. What stands between a
browser and that token's powers:

- **Loopback or a login.** By default the console listens on 127.0.0.1 only and
  answers only requests whose ``Host`` is a loopback name (so a web page cannot reach
  it through DNS rebinding). Listening on another address requires a console
  password (``--password-file``): every page then needs the session cookie that
  ``POST /login`` sets (HttpOnly, SameSite=Strict, Secure under HTTPS; signed with a
  secret drawn at start-up, so a restart ends every session).
- **No cross-site writes.** A POST (an outcome, a login) whose ``Origin`` is not the
  console's own, or that the browser marks ``Sec-Fetch-Site: cross-site``, is refused
  with 403: another site open in the agent's browser cannot record outcomes.
- **Headers.** A Content-Security-Policy allows only the console's own scripts (no
  inline script runs, whatever a profile holds), pages are not cached (they show
  personal data) nor framed.

Pure ASGI middleware: server-sent-event streams pass through untouched.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SESSION_COOKIE = "decision_console_session"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
#: paths served without a session: the login page and the static files
OPEN_PATHS = ("/login", "/static/")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; "
       "style-src-attr 'unsafe-inline'; img-src 'self' data: https:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def password_digest(password: str) -> bytes:
    return hashlib.sha256(password.encode()).digest()


@dataclass(frozen=True)
class Access:
    """The console's access rules. ``password_sha256``: None serves without a login
    (loopback only); ``secure_cookie``: the console is served over HTTPS."""

    password_sha256: bytes | None = field(default=None, repr=False)
    secure_cookie: bool = False
    session_s: int = 12 * 3600
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    @property
    def login(self) -> bool:
        return self.password_sha256 is not None

    def check_password(self, password: str) -> bool:
        return self.login and hmac.compare_digest(password_digest(password),
                                                  self.password_sha256)

    def session_cookie(self, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + self.session_s)
        return f"{expires}.{self._sign(str(expires))}"

    def valid_session(self, cookie: str | None, now: float | None = None) -> bool:
        if not cookie or "." not in cookie:
            return False
        expires, _, signature = cookie.partition(".")
        if not hmac.compare_digest(signature, self._sign(expires)):
            return False
        return expires.isdigit() and int(expires) > (time.time() if now is None else now)

    def cookie_header(self, value: str, max_age: int) -> str:
        return (f"{SESSION_COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; "
                f"SameSite=Strict" + ("; Secure" if self.secure_cookie else ""))

    def _sign(self, text: str) -> str:
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()


def safe_next(target: str | None) -> str:
    """Where to go after the login: a path on this console, never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/agent"
    return target


class Guard:
    """The checks above, in front of every route."""

    def __init__(self, app: ASGIApp, access: Access):
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + _HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope, headers: Headers):
        host = headers.get("host", "")
        if not self.access.login and not is_loopback(_hostname(host)):
            return PlainTextResponse("This console serves loopback names only (it has no "
                                     "login); open it as http://127.0.0.1:<port>/.", 400)
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            origin = headers.get("origin")
            if origin is not None and urlsplit(origin).netloc != host:
                return PlainTextResponse("Cross-site request refused.", 403)
            if headers.get("sec-fetch-site") == "cross-site":
                return PlainTextResponse("Cross-site request refused.", 403)
        path = scope["path"]
        if self.access.login and not path.startswith(OPEN_PATHS):
            cookie = _cookie(headers.get("cookie", ""), SESSION_COOKIE)
            if not self.access.valid_session(cookie):
                if headers.get("hx-request") or path.endswith("/live"):
                    return PlainTextResponse("Your console session ended: sign in again.", 401)
                here = path + (f"?{scope['query_string'].decode()}"
                               if scope.get("query_string") else "")
                return RedirectResponse(f"/login?next={quote(here, safe='')}", 303)
        return None


def _hostname(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rpartition(":")[0] if host_header.count(":") == 1 else host_header


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None
