"""Named scenarios: which user classes a run spawns (by their weights)."""

from __future__ import annotations

from locust import User

from loadtests.users.hospital import HospitalUser
from loadtests.users.mobile import MobileUser
from loadtests.users.reader import ReaderUser

SCENARIOS: dict[str, list[type[User]]] = {
    "mobile": [MobileUser],
    "hospital": [HospitalUser],
    "mixed": [MobileUser, HospitalUser, ReaderUser],
}
