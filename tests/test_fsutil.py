"""p2phier.fsutil: atomic single-file writes and batches of files made durable together."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2phier import fsutil
from p2phier.fsutil import WriteBatch, fsync_dir, syncfs, write_atomic


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# --- write_atomic --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o640])
def test_write_atomic_exact_mode_ignores_the_umask(tmp_path: Path, mode: int) -> None:
    old = os.umask(0o277)
    try:
        path = write_atomic(tmp_path / "f", b"content", mode, exact_mode=True)
    finally:
        os.umask(old)
    assert path.read_bytes() == b"content"
    assert os.stat(path).st_mode & 0o777 == mode
    assert listing(tmp_path) == ["f"]


def test_write_atomic_applies_the_umask_like_open(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "f", b"content", 0o666)
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "f").st_mode & 0o777 == 0o640


def test_write_atomic_replaces_and_streams_an_iterable(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old content that is longer")
    pieces: list[bytes | bytearray | memoryview] = [b"new ", bytearray(b"in "), memoryview(b"x")]
    write_atomic(path, iter(pieces))
    assert path.read_bytes() == b"new in x"
    assert listing(tmp_path) == ["f"]


def test_write_atomic_into_a_separate_temp_dir(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    write_atomic(tmp_path / "f", b"x", tmp_dir=tmp_path / "tmp")
    assert (tmp_path / "f").read_bytes() == b"x"
    assert listing(tmp_path / "tmp") == []


def test_a_failing_writer_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")

    def pieces() -> Iterator[bytes]:
        yield b"half of the new"
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError, match="source failed"):
        write_atomic(path, pieces())
    assert path.read_bytes() == b"old"
    assert listing(tmp_path) == ["f"]


def test_no_overwrite_refuses_an_existing_file_and_leaves_it(tmp_path: Path) -> None:
    path = tmp_path / "key"
    write_atomic(path, b"first", 0o600, overwrite=False)
    with pytest.raises(FileExistsError):
        write_atomic(path, b"second", 0o600, overwrite=False)
    assert path.read_bytes() == b"first"
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):  # a link is never followed or replaced
        write_atomic(tmp_path / "dangling", b"x", overwrite=False)
    assert not (tmp_path / "nowhere").exists()
    assert listing(tmp_path) == ["dangling", "key"]


def test_fsync_dir_accepts_a_directory_and_refuses_a_missing_one(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "absent")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="syncfs(2) is Linux-only")
def test_syncfs_is_used_on_linux(tmp_path: Path) -> None:
    assert syncfs(tmp_path) is True


def test_syncfs_reports_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fsutil._libc, "syncfs", None)
    assert syncfs(tmp_path) is False


# --- WriteBatch ----------------------------------------------------------------------------------


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "tmp").mkdir()
    (tmp_path / "out").mkdir()
    return tmp_path / "tmp", tmp_path / "out"


def test_staged_files_appear_only_at_commit(dirs: tuple[Path, Path]) -> None:
    tmp, out = dirs
    batch = WriteBatch(tmp)
    assert batch.stage(out / "a", b"alpha") is True
    assert batch.stage(out / "b", b"beta") is True
    assert batch.stage(out / "a", b"alpha") is False  # already staged
    assert (len(batch), batch.nbytes) == (2, 9)
    assert listing(out) == []
    pending = batch.pending(out / "a")
    assert pending is not None and Path(pending).read_bytes() == b"alpha"
    assert batch.pending(out / "c") is None
    assert sorted(batch.commit()) == [str(out / "a"), str(out / "b")]
    assert (out / "a").read_bytes() == b"alpha" and (out / "b").read_bytes() == b"beta"
    assert listing(tmp) == [] and len(batch) == 0 and batch.nbytes == 0
    assert batch.commit() == []


def test_content_addressed_batch_keeps_a_same_size_file(dirs: tuple[Path, Path]) -> None:
    tmp, out = dirs
    (out / "same").write_bytes(b"12345")
    (out / "damaged").write_bytes(b"123")
    inode = os.stat(out / "same").st_ino
    batch = WriteBatch(tmp, content_addressed=True)
    batch.stage(out / "same", b"abcde")
    batch.stage(out / "damaged", b"abcde")
    batch.commit()
    assert os.stat(out / "same").st_ino == inode  # kept, not replaced
    assert (out / "damaged").read_bytes() == b"abcde"  # a different size is replaced
    assert listing(tmp) == []


def test_plain_batch_replaces_existing_files(dirs: tuple[Path, Path]) -> None:
    tmp, out = dirs
    (out / "f").write_bytes(b"12345")
    batch = WriteBatch(tmp)
    batch.stage(out / "f", b"abcde")
    batch.commit()
    assert (out / "f").read_bytes() == b"abcde"


def test_discard_and_take(dirs: tuple[Path, Path]) -> None:
    tmp, out = dirs
    batch = WriteBatch(tmp)
    batch.stage(out / "a", b"a")
    batch.stage(out / "b", b"bb")
    taken = batch.take(out / "b")
    assert taken is not None and Path(taken).read_bytes() == b"bb"
    assert batch.take(out / "b") is None and batch.nbytes == 1
    os.unlink(taken)
    batch.discard()
    assert listing(tmp) == [] and len(batch) == 0
    assert batch.commit() == []
    assert listing(out) == []


def test_a_failed_commit_removes_every_remaining_temp(dirs: tuple[Path, Path]) -> None:
    tmp, out = dirs
    (out / "sub").mkdir()
    batch = WriteBatch(tmp)
    batch.stage(out / "a", b"a")
    batch.stage(out / "sub" / "b", b"b")
    batch.stage(out / "z", b"z")
    (out / "sub").rmdir()
    (out / "sub").write_bytes(b"a file where a directory was")  # renames into it fail
    with pytest.raises(NotADirectoryError):
        batch.commit()
    assert listing(tmp) == []
    assert len(batch) == 0
    assert (out / "a").read_bytes() == b"a"  # renamed before the failure: complete


def test_commit_recreates_a_vanished_destination_directory(dirs: tuple[Path, Path]) -> None:
    tmp, out = dirs
    (out / "sub").mkdir()
    batch = WriteBatch(tmp)
    batch.stage(out / "sub" / "f", b"data")
    (out / "sub").rmdir()
    batch.commit()
    assert (out / "sub" / "f").read_bytes() == b"data"


def test_fallback_commit_fsyncs_files_and_directories(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp, out = dirs
    monkeypatch.setattr(fsutil._libc, "syncfs", None)
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the fsynced files")
    monkeypatch.setattr(os, "fsync", fsync)
    batch = WriteBatch(tmp)
    batch.stage(out / "a", b"a")
    batch.stage(out / "b", b"b")
    batch.sync_dir_too(out)
    batch.commit()
    temps = [p for p in synced if Path(p).parent == tmp]
    assert len(temps) == 2  # each temp file before any rename
    assert synced.index(str(out)) > max(synced.index(t) for t in temps)
    assert synced[-1] == str(out)  # the renames made durable last
    assert (out / "a").read_bytes() == b"a"


def test_write_durable_refuses_to_overwrite_and_commit_dir_renames(tmp_path: Path) -> None:
    tmp = tmp_path / ".staging"
    tmp.mkdir()
    fsutil.write_durable(tmp / "a", b"one")
    with pytest.raises(FileExistsError):
        fsutil.write_durable(tmp / "a", b"two")
    fsutil.commit_dir(tmp, tmp_path / "final")
    assert not tmp.exists()
    assert (tmp_path / "final" / "a").read_bytes() == b"one"


# --- open_regular --------------------------------------------------------------------------------


@pytest.mark.timeout(30)  # a plain open() of the FIFO would block for ever
def test_open_regular_refuses_fifos_and_directories_without_blocking(tmp_path: Path) -> None:
    from p2phier.errors import NotRegularFileError
    from p2phier.fsutil import open_regular

    (tmp_path / "f").write_bytes(b"content")
    (tmp_path / "link").symlink_to(tmp_path / "f")  # links are followed (HF snapshots)
    for name in ("f", "link"):
        with open(open_regular(tmp_path / name), "rb") as fh:
            assert fh.read() == b"content"
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(NotRegularFileError, match=r"weights .*fifo is a FIFO, not a regular file"):
        open_regular(tmp_path / "fifo", "weights")
    with pytest.raises(NotRegularFileError, match="is a directory"):
        open_regular(tmp_path)
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "missing")
