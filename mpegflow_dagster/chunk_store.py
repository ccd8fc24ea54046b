"""Finished pieces of a shared encode (time chunks, the audio), kept by the recipe that decides
their bytes in an artifact store, so that whoever needs a piece next (a retry of the step, a
re-execution of a failed run, the join step on another machine) takes it instead of encoding it
again. No Dagster here: the encode step and its chunk-batch steps (stages/encode.py) use it.

A piece is a directory published whole under `<prefix>/<key>` and then its record (the FFmpeg
run that made it) as `<prefix>/<key>.json`: a piece without its record is unfinished and never
taken, so a publish cut short (a killed worker, a full disk) is encoded again, not joined half.

Example:
    .. code-block:: python

        from pathlib import Path
        from mpegflow_dagster.chunk_store import ChunkStore
        from mpegflow_dagster.storage import LocalArtifactStore

        store = ChunkStore(LocalArtifactStore(Path("/tmp/chunks")), Path("/tmp/scratch"))
        print(store.get("0123abcd"))  # None: nothing finished under that key yet
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

from .media.runner import RunResult
from .storage import CHUNK_CACHE, STALE_PIECE_S, ArtifactStore, LocalArtifactStore

_RECORDED = ("argv", "returncode", "stderr_tail", "wall_s", "cpu_s", "started_at")


class ChunkStore:
    """Pieces in `store` under `prefix`; new ones are made in `scratch` (a local directory) and
    published from there."""

    def __init__(self, store: ArtifactStore, scratch: Path, prefix: str = "") -> None:
        self.store, self.scratch, self.prefix = store, Path(scratch), PurePosixPath(prefix)

    def _keys(self, key: str) -> tuple[PurePosixPath, PurePosixPath]:
        return self.prefix / key, self.prefix / f"{key}.json"

    def get(self, key: str) -> Optional[tuple[Path, RunResult]]:
        """The local directory of a finished piece and the run that made it, or None."""
        tree, record = self._keys(key)
        if not self.store.exists(record):
            return None
        run = RunResult(**json.loads(self.store.local_path(record).read_text()))
        return self.store.local_path(tree), run

    def made(self, key: str, make: Callable[[Path], RunResult]) -> tuple[Path, RunResult]:
        """The piece `key` and the run that made it: the finished one if there is one, else
        made now by `make(into)` (see `ensure`)."""
        found = self.get(key)
        if found is not None:
            return found
        run = self.ensure(key, make)
        found = self.get(key)
        assert found is not None  # just published
        return found[0], run or found[1]

    def ensure(self, key: str, make: Callable[[Path], RunResult]) -> Optional[RunResult]:
        """Make the piece `key` unless it is finished already (then None): `make(into)` writes
        it into a fresh directory, published once `make` returned; a failure leaves nothing.
        Nothing is fetched, for steps that only make pieces for another to join."""
        tree_key, record_key = self._keys(key)
        if self.store.exists(record_key):
            return None
        self.scratch.mkdir(parents=True, exist_ok=True)
        making = self.scratch / f".{key}.{uuid.uuid4().hex[:8]}"
        making.mkdir()
        try:
            run = make(making)
            record = making.with_suffix(".json")
            record.write_text(json.dumps({f: getattr(run, f) for f in _RECORDED}))
            self.store.publish(making, tree_key)
            self.store.publish(record, record_key)
        finally:
            shutil.rmtree(making, ignore_errors=True)
            making.with_suffix(".json").unlink(missing_ok=True)
        return run

    def remove(self, key: str) -> None:
        """Forget a piece once everything made from it is stored (the record first: a piece
        half removed is unfinished, not taken)."""
        tree, record = self._keys(key)
        self.store.remove(record)
        self.store.remove(tree)

    def collect_stale(self, max_age_s: float = STALE_PIECE_S) -> int:
        """Remove the pieces, finished or cut short, that nobody wrote for `max_age_s`: those of
        runs that failed and were never run again (a finished run removes its own). Returns how
        many."""
        written: dict[str, float] = {}
        names: dict[str, list[str]] = {}
        for name, at in self.store.entries(self.prefix).items():
            key = name.removesuffix(".json")
            written[key] = max(written.get(key, 0.0), at)
            names.setdefault(key, []).append(name)
        stale = [key for key, at in written.items() if time.time() - at > max_age_s]
        for key in stale:
            for name in sorted(names[key], reverse=True):  # `<key>.json` first, as in `remove`
                self.store.remove(self.prefix / name)
        return len(stale)


def local_chunks(work: Path) -> ChunkStore:
    """Pieces of the shared encodes made on this machine, under the scratch root `work`."""
    root = Path(work) / CHUNK_CACHE
    return ChunkStore(LocalArtifactStore(root), root)
