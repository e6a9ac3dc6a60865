"""A small OAuth 2.0 identity provider for tests, over TLS (trustme) on 127.0.0.1: OpenID
discovery (Microsoft's form under /<tenant>/v2.0 and Google's at the root), the device
authorization grant (RFC 8628; the test approves the code), the authorization code with
PKCE (approved at once, as if the user clicked Allow), refresh, and introspection (RFC
7662, for Dovecot's oauth2 passdb). The test controls it: approve a device code, expire or
revoke tokens, count what was asked."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import trustme


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


@dataclass
class Provider:
    """What the identity provider knows; ``user`` is the one person who signs in."""

    user: str = "invitasjon@example.org"
    client_id: str = "11111111-2222-3333-4444-555555555555"
    lifetime: int = 3600  # seconds an access token lives
    access: dict[str, str] = field(default_factory=dict)  # access token → user
    refresh: dict[str, str] = field(default_factory=dict)  # refresh token → user
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)  # device_code → state
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)  # authorization codes
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, grant_type)
    scopes: list[str] = field(default_factory=list)  # the scopes of every token request
    user_codes: threading.Condition = field(default_factory=threading.Condition)
    port: int = 0

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def issue(self, scope: str) -> dict[str, Any]:
        access, refresh = "at-" + secrets.token_urlsafe(24), "rt-" + secrets.token_urlsafe(24)
        self.access[access] = self.user
        self.refresh[refresh] = self.user
        now = int(time.time())
        claims = {"iss": f"{self.base}/organizations/v2.0", "sub": "sub-1", "aud":
                  self.client_id, "iat": now, "exp": now + self.lifetime, "oid": "oid-1",
                  "tid": "tid-1", "preferred_username": self.user, "email": self.user}
        return {"token_type": "Bearer", "access_token": access, "refresh_token": refresh,
                "expires_in": self.lifetime, "scope": scope,
                "id_token": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.",
                "client_info": _b64({"uid": "oid-1", "utid": "tid-1"})}

    def approve(self, timeout: float = 30.0) -> str:
        """Approve the device code that a sign-in is waiting for (waits until one is
        asked for); returns the user code."""
        with self.user_codes:
            if not self.user_codes.wait_for(lambda: any(not d["approved"] for d in
                                                        self.devices.values()), timeout):
                raise TimeoutError("no device code was asked for")
            device = next(d for d in self.devices.values() if not d["approved"])
            device["approved"] = True
            return str(device["user_code"])

    def expire_access(self) -> None:
        self.access.clear()

    def revoke(self) -> None:
        self.access.clear()
        self.refresh.clear()


class Handler(BaseHTTPRequestHandler):
    provider: Provider

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _send(self, status: int, body: dict[str, Any] | None = None,
              headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body or {}).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        p = self.provider
        url = urlsplit(self.path)
        if url.path.endswith("/.well-known/openid-configuration"):
            prefix = url.path.removesuffix("/.well-known/openid-configuration")
            tenant = prefix.removesuffix("/v2.0")
            self._send(200, {
                "issuer": f"{p.base}{prefix}",
                "authorization_endpoint": f"{p.base}{tenant}/oauth2/v2.0/authorize",
                "token_endpoint": f"{p.base}{tenant}/oauth2/v2.0/token",
                "device_authorization_endpoint": f"{p.base}{tenant}/oauth2/v2.0/devicecode",
                "introspection_endpoint": f"{p.base}/introspect",
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"]})
        elif url.path.endswith("/authorize"):
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            code = "code-" + secrets.token_urlsafe(12)
            p.codes[code] = query
            target = query["redirect_uri"] + "?" + urlencode(
                {"code": code, "state": query.get("state", ""), "scope": query.get("scope")})
            self._send(302, {}, {"Location": target})
        else:
            self._send(404)

    def do_POST(self) -> None:
        p = self.provider
        length = int(self.headers.get("Content-Length", "0"))
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        path = urlsplit(self.path).path
        p.requests.append((path, form.get("grant_type", "")))
        if path.endswith("/devicecode"):
            device = "dc-" + secrets.token_urlsafe(12)
            with p.user_codes:
                p.devices[device] = {"user_code": f"U{len(p.devices) + 1:03d}XYZ",
                                     "approved": False, "scope": form.get("scope", "")}
                p.user_codes.notify_all()
            self._send(200, {"device_code": device, "user_code": p.devices[device]["user_code"],
                             "verification_uri": f"{p.base}/device", "expires_in": 600,
                             "interval": 1, "message": "see verification_uri"})
        elif path.endswith("/token"):
            self._token(form)
        elif path == "/introspect":
            user = p.access.get(form.get("token", ""))
            self._send(200, {"active": True, "username": user} if user else {"active": False})
        else:
            self._send(404)

    def _token(self, form: dict[str, str]) -> None:
        p = self.provider
        grant = form.get("grant_type", "")
        p.scopes.append(form.get("scope", ""))
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            device = p.devices.get(form.get("device_code", ""))
            if device is None:
                self._send(400, {"error": "invalid_grant"})
            elif not device["approved"]:
                self._send(400, {"error": "authorization_pending",
                                 "error_description": "waiting for the user"})
            else:
                del p.devices[form["device_code"]]
                # MSAL sends no scope here: the response must name it, or the cached token
                # never matches a silent request
                self._send(200, p.issue(device["scope"]))
        elif grant == "authorization_code":
            asked = p.codes.pop(form.get("code", ""), None)
            verifier = form.get("code_verifier", "")
            challenge = base64.urlsafe_b64encode(
                hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
            if asked is None or asked.get("code_challenge") != challenge or \
                    asked.get("code_challenge_method") != "S256":
                self._send(400, {"error": "invalid_grant", "error_description": "PKCE"})
            else:
                self._send(200, p.issue(asked.get("scope", "")))
        elif grant == "refresh_token":
            user = p.refresh.pop(form.get("refresh_token", ""), None)
            if user is None:
                self._send(400, {"error": "invalid_grant", "error_description":
                                 "AADSTS700082: The refresh token has expired or was revoked"})
            else:
                self._send(200, p.issue(form.get("scope", "")))
        else:
            self._send(400, {"error": "unsupported_grant_type"})


class IdentityProvider:
    """``with IdentityProvider(ca) as idp:`` HTTPS on ``idp.provider.base``."""

    def __init__(self, ca: trustme.CA) -> None:
        self.provider = Provider()
        self.ca = ca

    def __enter__(self) -> IdentityProvider:
        handler = type("BoundHandler", (Handler,), {"provider": self.provider})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.provider.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
