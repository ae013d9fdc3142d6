"""Sessions with a PKCS#11 token: one login per process and token, a small pool of
sessions (python-pkcs11 sessions must not be used by two threads at once)."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pkcs11
from pkcs11 import exceptions as p11e

from gateway.keys.base import KeyUnusable

# The login state of PKCS#11 belongs to the application (the process), not to a session:
# a second C_Login answers USER_ALREADY_LOGGED_IN and closing the logged-in session logs
# every session out. So each (module, token) is logged in once, by a session kept open
# for the life of the process; the pools' sessions share that login.
_LOGINS: dict[tuple[str, str], Any] = {}
_LOGINS_LOCK = threading.Lock()


@dataclass
class Lent:
    """A pooled session and the objects found through it (valid for one listing)."""

    session: Any
    generation: int = -1
    objects: dict[Any, Any] = field(default_factory=dict)


class TokenSessions:
    """Up to `size` read-write sessions with one token, lent one at a time."""

    def __init__(self, module: str, token_label: str, pin: str, *, size: int = 4) -> None:
        self.where = f"PKCS#11 module {module}, token {token_label!r}"
        self._size = size
        self._idle: queue.LifoQueue[Lent] = queue.LifoQueue()
        self._opened = 0
        self._lock = threading.Lock()
        self._closed = False
        try:
            lib = pkcs11.lib(module)
            self._token = lib.get_token(token_label=token_label)
        except p11e.NoSuchToken:
            raise KeyUnusable(f"{self.where}: no such token") from None
        except p11e.MultipleTokensReturned:
            raise KeyUnusable(f"{self.where}: more than one token has this label") from None
        except p11e.PKCS11Error as e:
            raise KeyUnusable(f"{self.where}: cannot load the module ({_name(e)})") from None
        with _LOGINS_LOCK:
            key = (module, token_label)
            if key not in _LOGINS:
                try:
                    _LOGINS[key] = self._token.open(user_pin=pin, rw=True)
                except p11e.PinIncorrect:
                    raise KeyUnusable(f"{self.where}: the PIN is not correct") from None
                except p11e.PinLocked:
                    raise KeyUnusable(f"{self.where}: the user PIN is locked") from None
                except p11e.PKCS11Error as e:
                    raise KeyUnusable(f"{self.where}: cannot log in ({_name(e)})") from None

    def mechanisms(self) -> set[Any]:
        try:
            return set(self._token.slot.get_mechanisms())
        except p11e.PKCS11Error as e:
            raise KeyUnusable(f"{self.where}: cannot list mechanisms ({_name(e)})") from None

    @contextlib.contextmanager
    def session(self) -> Iterator[Lent]:
        """A session for this thread alone until the block ends. A session the token
        dropped is closed rather than lent again."""
        s = self._take()
        healthy = True
        try:
            yield s
        except (p11e.SessionHandleInvalid, p11e.SessionClosed, p11e.DeviceRemoved):
            healthy = False
            raise
        finally:
            if healthy and not self._closed:
                self._idle.put(s)
            else:
                self._discard(s)

    def close(self) -> None:
        """Close the pool's sessions (the process's login stays)."""
        self._closed = True
        while True:
            try:
                s = self._idle.get_nowait()
            except queue.Empty:
                return
            self._discard(s)

    def _take(self) -> Lent:
        if self._closed:
            raise KeyUnusable(f"{self.where}: the key provider is closed")
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            grow = self._opened < self._size
            if grow:
                self._opened += 1
        if not grow:
            return self._idle.get()
        try:
            return Lent(self._token.open(rw=True))
        except p11e.PKCS11Error as e:
            with self._lock:
                self._opened -= 1
            raise KeyUnusable(f"{self.where}: cannot open a session ({_name(e)})") from None

    def _discard(self, lent: Lent) -> None:
        with self._lock:
            self._opened -= 1
        with contextlib.suppress(p11e.PKCS11Error):
            lent.session.close()


def _name(e: BaseException) -> str:
    """An error's class name: PKCS#11 errors carry a return code name, never key bytes."""
    return type(e).__name__
