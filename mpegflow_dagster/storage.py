"""Where binary artifacts live: streamed, hashed and published atomically. No Dagster here.

An artifact is a file or a directory tree produced in a scratch directory. Publishing moves it
to its final location under a temporary name first and renames it into place only when complete,
so a reader never sees a half-written output. The store is a small interface so that S3 is a
second backend, not a rewrite.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator, Optional, Protocol

from . import liveness

CHUNK = 1 << 20  # stream in 1 MiB chunks: memory stays flat for any file size
COPY_CHUNK = 1 << 28  # per copy_file_range call; the bytes stay in the kernel
SCRATCH_MARKER = ".mpegflow-scratch"


@dataclass(frozen=True)
class ArtifactRecord:
    uri: str  # where it was published (path or s3:// URI)
    sha256: (
        str  # file: sha256 of its bytes; directory: sha256 of its sorted "relpath sha256" manifest
    )
    size_bytes: int
    files: int
    is_dir: bool


Digest = tuple[str, int, int]  # (sha256, size in bytes, file count), as `describe` returns


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return _sha256_fd(fh.fileno())


def _chunks(fd: int) -> Iterator[bytes]:
    """An open file's bytes, read by offset (the descriptor's position is neither used nor moved)."""
    offset = 0
    while chunk := os.pread(fd, CHUNK, offset):
        yield chunk
        offset += len(chunk)


def _sha256_fd(fd: int) -> str:
    h = hashlib.sha256()
    for chunk in _chunks(fd):
        h.update(chunk)
    return h.hexdigest()


def copy_hashing(src: Path, dest: Path, *, fd: Optional[int] = None) -> str:
    """Copy `src` to `dest` and return its sha256, in the time of the slower of the two. `fd`,
    when given, is `src` already open for reading (e.g. by `safety.open_in_directory`): what is
    copied and hashed is that file, whatever the name points at by now.

    The kernel copies (`copy_file_range`: no bytes through Python) while this thread hashes the
    same pages from the cache: measured here on a 1.2 GB source, 0.85 s against 2.3 s for one
    Python loop that reads, hashes and writes. The two reads are kept honest by refusing a
    source that changed (size or mtime) while it was being copied."""
    owned = fd is None
    source = os.open(src, os.O_RDONLY | os.O_CLOEXEC) if fd is None else fd
    try:
        before = os.fstat(source)
        failure: list[BaseException] = []

        def copy() -> None:
            try:
                _copy_fd(source, dest)
            except BaseException as exc:  # re-raised in the caller's thread
                failure.append(exc)

        copier = threading.Thread(target=copy, name="mpegflow-copy", daemon=True)
        copier.start()
        try:
            digest = _sha256_fd(source)
        finally:
            copier.join()
        if failure:
            raise failure[0]
        after = os.fstat(source)
    finally:
        if owned:
            os.close(source)
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise SourceChanged(
            f"{src} changed while it was being copied (still being written?); try again once it is complete"
        )
    return digest


class SourceChanged(OSError):
    """The file changed while it was read: its copy and its hash may not match. Transient: a file
    still being written is usually complete on the retry."""

    failure_class = "transient"
    reason = "input.changed_while_copied"


def _copy_fd(fd: int, dest: Path) -> None:
    """Copy the open file `fd` (by offset) into a new file `dest`."""
    with open(dest, "wb") as fout:
        offset = 0
        try:
            while copied := os.copy_file_range(fd, fout.fileno(), COPY_CHUNK, offset):
                offset += copied
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
        # copy_file_range is not supported between these filesystems: stream the bytes instead
        fout.seek(0)
        fout.truncate()
        for chunk in _chunks(fd):
            fout.write(chunk)


def _tree_files(path: Path) -> list[Path]:
    return sorted(p for p in Path(path).rglob("*") if p.is_file())


def sha256_files(path: Path) -> dict[Path, str]:
    """sha256 of a file, or of every file in a tree, by path (what `describe` takes as `known`)."""
    path = Path(path)
    return {f: sha256_file(f) for f in ([path] if path.is_file() else _tree_files(path))}


def copy_tree_hashing(src: Path, dest: Path) -> dict[Path, str]:
    """Copy a file, or every file of a tree, to `dest`, hashing while copying (`copy_hashing`);
    the sha256 of each copy by its path, as `describe` takes it."""
    src, dest = Path(src), Path(dest)
    if src.is_file():
        return {dest: copy_hashing(src, dest)}
    known = {}
    for f in _tree_files(src):
        target = dest / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        known[target] = copy_hashing(f, target)
    return known


def describe(path: Path, known: Optional[dict[Path, str]] = None) -> Digest:
    """(sha256, total size, file count) of a file or tree, streaming every byte once; `known`
    gives the sha256 of files already hashed (while they were written)."""
    path = Path(path)
    known = known or {}

    def sha(f: Path) -> str:
        return known.get(f) or sha256_file(f)

    if path.is_file():
        return sha(path), path.stat().st_size, 1
    manifest = hashlib.sha256()
    size = count = 0
    for f in _tree_files(path):
        rel = f.relative_to(path).as_posix()
        manifest.update(f"{rel} {sha(f)}\n".encode())
        size += f.stat().st_size
        count += 1
    return manifest.hexdigest(), size, count


class ArtifactStore(Protocol):
    def publish(
        self, src: Path, key: PurePosixPath, digest: Optional[Digest] = None
    ) -> ArtifactRecord:
        """Move `src` (file or directory) to `key`, atomically replacing what was there. `digest`
        is `describe(src)` when the caller already has it (saves reading every byte again)."""
        ...

    def local_path(self, key: PurePosixPath) -> Path:
        """A local path holding the artifact at `key` (a cached download for remote stores)."""
        ...

    def exists(self, key: PurePosixPath) -> bool: ...

    def stat(self, key: PurePosixPath) -> ArtifactRecord | None:
        """The record of what is stored at `key` now (re-hashed), or None if nothing is."""

    def remove(self, key: PurePosixPath) -> None:
        """Delete the artifact at `key` (file or tree), if any."""

    def entries(self, prefix: PurePosixPath) -> dict[str, float]:
        """The names directly under `prefix`, each with when it was last written (epoch s)."""
        ...


class LocalArtifactStore:
    """Artifacts under one root directory: `<root>/<key>`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def _path(self, key: PurePosixPath) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"artifact key {key} escapes the storage root {self.root}")
        return path

    def exists(self, key: PurePosixPath) -> bool:
        return self._path(key).exists()

    def local_path(self, key: PurePosixPath) -> Path:
        path = self._path(key)
        if not path.exists():
            raise FileNotFoundError(
                f"no artifact at {path}: materialize the upstream asset first (or check the storage root)"
            )
        return path

    def stat(self, key: PurePosixPath) -> ArtifactRecord | None:
        path = self._path(key)
        if not path.exists():
            return None
        sha, size, files = describe(path)
        return ArtifactRecord(
            uri=str(path), sha256=sha, size_bytes=size, files=files, is_dir=path.is_dir()
        )

    def remove(self, key: PurePosixPath) -> None:
        _remove(self._path(key))

    def entries(self, prefix: PurePosixPath) -> dict[str, float]:
        folder = self.root if str(prefix) in ("", ".") else self._path(prefix)
        return {e.name: e.lstat().st_mtime for e in folder.iterdir()} if folder.is_dir() else {}

    def publish(
        self, src: Path, key: PurePosixPath, digest: Optional[Digest] = None
    ) -> ArtifactRecord:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            renamed = _move_or_copy(Path(src), staging)
            # A rename keeps the very bytes the caller hashed; a copy is hashed as stored.
            sha, size, files = digest if digest and renamed else describe(staging)
            _replace(staging, dest)
        finally:
            if staging.exists():
                _remove(staging)
        return ArtifactRecord(
            uri=str(dest), sha256=sha, size_bytes=size, files=files, is_dir=dest.is_dir()
        )


def _move_or_copy(src: Path, dest: Path) -> bool:
    """Rename when on the same filesystem (no bytes copied, True), else stream a copy (False)."""
    try:
        os.rename(src, dest)
        return True
    except OSError:
        if src.is_dir():
            shutil.copytree(src, dest)
        else:
            shutil.copyfile(src, dest)
        return False


def _replace(staging: Path, dest: Path) -> None:
    if staging.is_dir() and dest.exists():
        # Directories cannot be swapped in one rename: move the old one aside first.
        old = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.old")
        os.rename(dest, old)
        os.rename(staging, dest)
        _remove(old)
    else:
        os.replace(staging, dest)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def scratch_dir(root: Path, *parts: str, temporary: bool = False) -> Iterator[Path]:
    """A private directory for one stage attempt. Removed with everything in it if the stage
    raises: a failed stage leaves no partial files. On success it stays until the IO manager
    has published the artifact out of it (see `release_scratch`), unless `temporary`.

    Its marker names the owning process, so that what a killed process left behind is found
    and removed by the next run (`collect_abandoned_scratch`)."""
    safe = [re.sub(r"[^A-Za-z0-9._-]+", "_", p)[:64] for p in parts]
    path = Path(root).resolve() / ".".join([*safe, uuid.uuid4().hex[:8]])
    path.mkdir(parents=True)
    (path / SCRATCH_MARKER).write_text(liveness.current())
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    if temporary:
        shutil.rmtree(path, ignore_errors=True)


# Finished time chunks of an encode (under the scratch root), kept by what decides their bytes
# until every output made from them is done, so that a retry or a re-run of a failed run encodes
# only the chunks that did not finish (stages/encode.py).
CHUNK_CACHE = "chunk-cache"
# A piece nobody wrote for this long belongs to a run that failed and was never run again.
STALE_PIECE_S = 86400.0


def collect_abandoned_scratch(root: Path) -> tuple[int, int]:
    """Remove the scratch directories under `root` whose owning process is gone (killed in the
    middle of a stage); those of live processes, and of other hosts sharing `root`, are kept.
    Returns (directories, bytes) removed."""
    removed = size = 0
    for marker in Path(root).glob(f"*/{SCRATCH_MARKER}"):
        try:
            owner = marker.read_text()
        except OSError:
            continue
        if liveness.is_gone(owner):
            size += sum(f.stat().st_size for f in _tree_files(marker.parent) if not f.is_symlink())
            shutil.rmtree(marker.parent, ignore_errors=True)
            removed += 1
    return removed, size


def release_scratch(artifact: Path) -> None:
    """Remove the scratch directory an artifact was made in, once it has been published."""
    for parent in Path(artifact).parents:
        if (parent / SCRATCH_MARKER).exists():
            shutil.rmtree(parent, ignore_errors=True)
            return
