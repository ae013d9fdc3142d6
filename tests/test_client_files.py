"""What `gateway upload` sends from the paths it is given."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.client.files import LocalFile, NoSuchInput, collect


def _collect(*paths: Path) -> tuple[list[LocalFile], list[str]]:
    skipped: list[str] = []
    found = collect(paths, skipped=lambda path, why: skipped.append(f"{path.name}: {why}"))
    return found, skipped


def test_a_folder_gives_every_regular_file_below_in_sorted_order(tmp_path: Path) -> None:
    root = tmp_path / "series"
    for name in ("b.dcm", "a/z.dcm", "a/b/c.dcm", "A.dcm", "empty"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"" if name == "empty" else b"x")
    found, skipped = _collect(root)
    assert [f.name for f in found] == ["A.dcm", "a/b/c.dcm", "a/z.dcm", "b.dcm", "empty"]
    assert all(f.path == root / f.name for f in found)
    assert skipped == []


def test_symlinks_are_not_followed_out_of_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "series"
    root.mkdir()
    (root / "real.dcm").write_bytes(b"x")
    (tmp_path / "secret").write_bytes(b"x")
    (root / "inside").symlink_to(root / "real.dcm")
    (root / "outside").symlink_to(tmp_path / "secret")
    (root / "linked-folder").symlink_to(tmp_path)
    (root / "dangling").symlink_to(root / "nothing")
    found, skipped = _collect(root)
    assert [f.name for f in found] == ["real.dcm"]
    assert sorted(skipped) == [
        "dangling: a symlink within the folder (its target is sent under its own name)",
        "inside: a symlink within the folder (its target is sent under its own name)",
        "linked-folder: a symlinked folder (not followed)",
        "outside: a symlink out of the folder (not followed)",
    ]


def test_files_are_sent_under_their_own_name_once(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    study = tmp_path / "d" / "study.dcm"
    study.write_bytes(b"x")
    found, _ = _collect(study, tmp_path / "d", study)
    assert found == [LocalFile(study, "study.dcm")]
    with pytest.raises(NoSuchInput, match="no such file or folder"):
        _collect(tmp_path / "missing")
