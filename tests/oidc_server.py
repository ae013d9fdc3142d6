"""A small OpenID provider for tests: discovery and JWKS served over http on a free
loopback port, signing keys made on the spot, tokens minted with joserfc, fetches counted."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OKPKey, RSAKey

AUDIENCE = "imaging-gateway"
Key = RSAKey | ECKey | OKPKey


class OidcProvider:
    """Keys by kid (published in the JWKS or not), and counters of what was fetched."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[str, Key]] = {}  # kid -> (alg, private key)
        self.published: list[str] = []
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self._lock = threading.Lock()
        provider = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body: dict[str, object]
                if self.path == "/.well-known/openid-configuration":
                    provider.discovery_fetches += 1
                    body = {"issuer": provider.issuer, "jwks_uri": provider.issuer + "/jwks"}
                elif self.path == "/jwks":
                    body = provider.jwks()
                    provider.jwks_fetches += 1
                elif self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", provider.issuer + "/jwks")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                elif self.path == "/big":
                    body = {"keys": [], "padding": "x" * (2 << 20)}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> OidcProvider:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            keys = [self.keys[kid][1].as_dict(private=False) for kid in self.published]
        return {"keys": keys}

    def add_key(self, alg: str, *, publish: bool = True) -> str:
        if alg == "RS256":
            key: Key = RSAKey.generate_key(2048)
        elif alg == "ES256":
            key = ECKey.generate_key("P-256")
        else:
            key = OKPKey.generate_key("Ed25519")
        kid = uuid.uuid4().hex[:12]
        key = type(key).import_key(key.as_dict(private=True), {"kid": kid, "use": "sig"})
        with self._lock:
            self.keys[kid] = (alg, key)
            if publish:
                self.published.append(kid)
        return kid

    def publish(self, kid: str) -> None:
        with self._lock:
            self.published.append(kid)

    def claims(self, **overrides: object) -> dict[str, object]:
        now = int(time.time())
        claims: dict[str, object] = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": "alice",
            "tenant": "north",
            "roles": ["uploader"],
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, kid: str, *, header: dict[str, object] | None = None, **claims: object) -> str:
        alg, key = self.keys[kid]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)  # EdDSA: see gateway/oidc.py
            return jwt.encode(
                {"alg": alg, "kid": kid, "typ": "at+jwt", **(header or {})},
                self.claims(**claims),
                key,
                algorithms=[alg],
            )

    def unsigned(self, kid: str, **claims: object) -> str:
        """A token with alg "none" and no signature."""
        return _b64json({"alg": "none", "kid": kid}) + "." + _b64json(self.claims(**claims)) + "."

    def hs256_with_public_key(self, kid: str, **claims: object) -> str:
        """HMAC-SHA256 keyed with the provider's public key (PEM): the confusion attack."""
        _, key = self.keys[kid]
        secret = key.as_pem(private=False)
        signing_input = (
            _b64json({"alg": "HS256", "kid": kid}) + "." + _b64json(self.claims(**claims))
        )
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return signing_input + "." + _b64(mac)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64json(value: object) -> str:
    return _b64(json.dumps(value).encode())


@contextmanager
def running_provider() -> Iterator[OidcProvider]:
    provider = OidcProvider().start()
    try:
        yield provider
    finally:
        provider.stop()
