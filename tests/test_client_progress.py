"""Progress of `gateway upload`: bars redrawn in place on a terminal, lines elsewhere."""

from __future__ import annotations

import io

from gateway.client.progress import Progress, bar, human


def test_bars_and_sizes() -> None:
    assert bar(0, 0).endswith("100.0%")  # an empty file is done at once
    assert bar(1, 4) == "[######..................]  25.0%"
    assert [human(n) for n in (5, 2048, 3 << 20, 5 << 30)] == [
        "5 B",
        "2.0 KiB",
        "3.0 MiB",
        "5.00 GiB",
    ]


def test_a_terminal_gets_a_bar_per_file_and_one_overall() -> None:
    out = io.StringIO()
    progress = Progress(out, total=300, files=2, tty=True)
    progress.start("a.dcm", 100)
    progress.start("b.dcm", 200)
    progress.finish("a.dcm", ok=True)
    screen = out.getvalue()
    assert "a.dcm" in screen and "b.dcm" in screen and "total, 0/2 files" in screen
    assert "\x1b[3F\x1b[J" in screen  # three live lines erased, then drawn again
    assert screen.rstrip("\n").endswith("total, 1/2 files")
    progress.close()
    assert out.getvalue().endswith("\x1b[2F\x1b[J")


def test_elsewhere_one_line_per_finished_file() -> None:
    out = io.StringIO()
    progress = Progress(out, total=300, files=2, tty=False)
    progress.start("a.dcm", 100)
    progress.update("a.dcm", 50)
    progress.finish("a.dcm", ok=False, note="413 ERR_MAX_SIZE_EXCEEDED")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("gateway upload: FAILED a.dcm (100 B, ")
    assert lines[0].endswith(": 413 ERR_MAX_SIZE_EXCEEDED [1/2]")
