"""Writeback hints for the folder store: sync_file_range, advisory, never raising."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from gateway.store import writeback


@pytest.mark.skipif(sys.platform != "linux", reason="sync_file_range is Linux's")
def test_the_kernel_takes_a_span_of_dirty_pages(tmp_path: Path) -> None:
    assert writeback.available()
    data = os.urandom(3 << 20)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, data, 0)
        assert writeback.start(fd, 1 << 20, 2 << 20)
        assert writeback.start(fd, 0, len(data) + 4096)  # past the end is fine
        os.fdatasync(fd)
        assert os.pread(fd, len(data) + 1, 0) == data  # a hint: nothing else changes
    finally:
        os.close(fd)


def test_nothing_to_write_back_is_not_asked(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert not writeback.start(fd, 0, 0)
    finally:
        os.close(fd)


def test_a_refused_request_returns_false_instead_of_raising(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    assert not writeback.start(fd, 0, 4096)  # closed: EBADF
    r, w = os.pipe()
    try:
        assert not writeback.start(w, 0, 4096)  # a pipe has no pages: ESPIPE
    finally:
        os.close(r)
        os.close(w)
