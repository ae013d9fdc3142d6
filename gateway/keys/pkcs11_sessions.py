"""Sessions with a PKCS#11 token: one login per process and token, and one call into the
module at a time.

python-pkcs11 initialises the module with C_Initialize(NULL): a promise that the
application never calls it from two threads at once (SoftHSM2 then runs without any
locking, and crashes if called concurrently). So every call goes through one lock per
module, and a provider needs no more than one session.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pkcs11
from pkcs11 import Mechanism, Object, ObjectClass, Session
from pkcs11 import exceptions as p11e

from gateway.keys.base import KeyUnusable

# The login state belongs to the process, not to a session: a second C_Login answers
# USER_ALREADY_LOGGED_IN and closing the logged-in session logs every session out. So
# each (module, token) is logged in once, by a session kept open for the life of the
# process; the providers' sessions share that login.
_LOGINS: dict[tuple[str, str], Session] = {}
_MODULE_LOCKS: dict[str, threading.RLock] = {}
_GLOBAL = threading.Lock()


@dataclass
class Lent:
    """The session and the objects found through it (valid for one listing)."""

    session: Session
    generation: int = -1
    objects: dict[tuple[ObjectClass, str, bytes], tuple[Object, ...]] = field(default_factory=dict)


class TokenSessions:
    """A session with one token, lent to one thread at a time."""

    def __init__(self, module: str, token_label: str, pin: str) -> None:
        self.where = f"PKCS#11 module {module}, token {token_label!r}"
        with _GLOBAL:
            self._lock = _MODULE_LOCKS.setdefault(module, threading.RLock())
        self._lent: Lent | None = None
        self._closed = False
        with self._lock:
            try:
                self._token = pkcs11.lib(module).get_token(token_label=token_label)
            except p11e.NoSuchToken:
                raise KeyUnusable(f"{self.where}: no such token") from None
            except p11e.MultipleTokensReturned:
                raise KeyUnusable(f"{self.where}: more than one token has this label") from None
            except p11e.PKCS11Error as e:
                raise KeyUnusable(f"{self.where}: cannot load the module ({_name(e)})") from None
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

    def mechanisms(self) -> set[Mechanism]:
        with self._lock:
            try:
                return set(self._token.slot.get_mechanisms())
            except p11e.PKCS11Error as e:
                raise KeyUnusable(f"{self.where}: cannot list mechanisms ({_name(e)})") from None

    @contextlib.contextmanager
    def session(self) -> Iterator[Lent]:
        """The session, for this thread alone until the block ends. A session the token
        dropped is replaced by a new one next time."""
        with self._lock:
            if self._closed:
                raise KeyUnusable(f"{self.where}: the key provider is closed")
            if self._lent is None:
                try:
                    self._lent = Lent(self._token.open(rw=True))
                except p11e.PKCS11Error as e:
                    raise KeyUnusable(f"{self.where}: cannot open a session ({_name(e)})") from None
            try:
                yield self._lent
            except (p11e.SessionHandleInvalid, p11e.SessionClosed, p11e.DeviceRemoved):
                self._drop()
                raise

    def close(self) -> None:
        """Close this provider's session (the process's login stays)."""
        with self._lock:
            self._closed = True
            self._drop()

    def _drop(self) -> None:
        lent, self._lent = self._lent, None
        if lent is not None:
            with contextlib.suppress(p11e.PKCS11Error):
                lent.session.close()


def _name(e: BaseException) -> str:
    """An error's class name: PKCS#11 errors carry a return code name, never key bytes."""
    return type(e).__name__
