"""The one atomic-write helper and the cache folder."""

from pathlib import Path

import pytest

from semivl_fast.files import atomic_write, cache_dir, temp_path


def test_atomic_write_replaces_a_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    assert atomic_write(target, lambda tmp: tmp.write_text("one")) == target
    atomic_write(target, lambda tmp: tmp.write_text("two"))
    assert target.read_text() == "two" and sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("finished work")

    def half_then_crash(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_crash)
    assert target.read_text() == "finished work" and not temp_path(target).exists()


def test_atomic_write_of_a_folder(tmp_path):
    """A folder written in one go (the cached prior): it appears whole or not at all."""
    target = tmp_path / "run"

    def fill(tmp: Path) -> None:
        tmp.mkdir()
        (tmp / "weights").write_text("w")

    atomic_write(target, fill)
    assert (target / "weights").read_text() == "w"

    def fail(tmp: Path) -> None:
        fill(tmp)
        raise RuntimeError("pretraining failed")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "other", fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SEMIVL_FAST_CACHE", str(tmp_path / "c"))
    assert cache_dir("text") == tmp_path / "c" / "text"
    monkeypatch.delenv("SEMIVL_FAST_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir("vilseg") == tmp_path / "x" / "semivl_fast" / "vilseg"
