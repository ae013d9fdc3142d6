"""Small shared type aliases."""

from __future__ import annotations

from typing import TypeAlias

# Anything with the buffer protocol that we pass around without copying.
Buffer: TypeAlias = bytes | bytearray | memoryview
