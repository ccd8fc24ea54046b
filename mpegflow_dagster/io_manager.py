"""IO manager for binary outputs: assets return a local Path, the IO manager publishes it.

Nothing is pickled and no file is read into memory: files are moved (or stream-copied) into the
store under a temporary name, hashed while streaming, and renamed into place when complete.
Downstream assets receive a local Path. An asset whose recipe is unchanged returns `Reused`
instead: the stored artifact is checked and kept, nothing is re-encoded.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Optional, Union

from dagster import AssetKey, ConfigurableIOManager, InputContext, MetadataValue, OutputContext
from pydantic import Field

from .provenance import SIDECAR_SUFFIX
from .storage import ArtifactRecord, ArtifactStore, Digest, LocalArtifactStore, release_scratch

UNPARTITIONED = "__all__"
PROVENANCE_KEY = "provenance"


@dataclass(frozen=True)
class Reused:
    """Returned by an asset to keep the artifact it stored earlier (same recipe, same bytes), as
    `ArtifactIOManager.stored` found and checked it."""

    record: ArtifactRecord

    @property
    def name(self) -> str:
        return PurePosixPath(self.record.uri).name


class StoredArtifactChanged(RuntimeError):
    """The artifact a stage would reuse is missing or its bytes differ from the ones recorded:
    storage was damaged or written by someone else. No retry brings the recorded bytes back."""

    failure_class = "permanent"
    reason = "storage.artifact_changed"


class ArtifactIOManager(ConfigurableIOManager):
    """Base of the binary IO managers: what to do with outputs, given a store (`store()`)."""

    def store(self) -> ArtifactStore:
        raise NotImplementedError("subclasses return the ArtifactStore they publish to")

    @staticmethod
    def _folder(asset_key: AssetKey, partition: Optional[str]) -> PurePosixPath:
        return PurePosixPath(*asset_key.path, partition or UNPARTITIONED)

    @classmethod
    def _context_folder(cls, context: InputContext | OutputContext) -> PurePosixPath:
        partition = context.asset_partition_key if context.has_asset_partitions else None
        # For a fan-in input, each upstream output names its own asset; the input's key does not.
        upstream = context.upstream_output if isinstance(context, InputContext) else None
        key = (
            upstream.asset_key
            if upstream is not None and upstream.has_asset_key
            else context.asset_key
        )
        return cls._folder(key, partition)

    def stored(
        self, asset_key: AssetKey, partition: Optional[str], name: str, sha256: str
    ) -> ArtifactRecord:
        """The artifact `name` stored for this asset and partition, re-hashed; raises
        StoredArtifactChanged unless its sha256 is still `sha256`."""
        key = self._folder(asset_key, partition) / name
        record = self.store().stat(key)
        if record is None or record.sha256 != sha256:
            found = "is missing" if record is None else f"has sha256 {record.sha256[:12]}..."
            raise StoredArtifactChanged(
                f"{asset_key.to_user_string()}: the stored artifact {record.uri if record else key} {found}, but "
                f"{sha256[:12]}... was recorded; re-run with the ffmpeg resource's `force: true` (CLI --force, `mpegflow redo`) to make it again."
            )
        return record

    def handle_output(self, context: OutputContext, obj: Union[Path, Reused]) -> None:
        store = self.store()
        folder = self._context_folder(context)
        if isinstance(obj, Reused):
            record = obj.record
        elif isinstance(obj, Path) and obj.exists():
            record = store.publish(obj, folder / obj.name, digest=_digest(context.output_metadata))
            release_scratch(obj)
        else:
            raise TypeError(
                f"{context.asset_key.to_user_string()} returned {obj!r}: assets using BinaryIOManager must "
                "return the Path of a file or directory they wrote."
            )
        provenance = context.output_metadata.get(PROVENANCE_KEY)
        if provenance is not None:
            self._publish_sidecar(store, folder / f"{obj.name}{SIDECAR_SUFFIX}", provenance.value)
        context.add_output_metadata(_record_metadata(record))

    @staticmethod
    def _publish_sidecar(store: ArtifactStore, key: PurePosixPath, provenance: object) -> None:
        with tempfile.TemporaryDirectory(prefix="mpegflow-sidecar-") as work:
            sidecar = Path(work) / key.name
            sidecar.write_text(json.dumps(provenance, indent=2, sort_keys=True))
            store.publish(sidecar, key)

    def load_input(self, context: InputContext) -> Path:
        folder = self.store().local_path(self._context_folder(context))
        entries = [
            p
            for p in folder.iterdir()
            if not p.name.startswith(".") and not p.name.endswith(SIDECAR_SUFFIX)
        ]
        if len(entries) != 1:
            raise FileNotFoundError(
                f"expected one artifact in {folder}, found {len(entries)}: re-materialize "
                f"{context.asset_key.to_user_string()} for this partition"
            )
        return entries[0]


def _digest(metadata: Mapping[str, Any]) -> Optional[Digest]:
    """The digest an asset reported with its output (`sha256`, `size_bytes`, `files`), if any."""
    if all(k in metadata for k in ("sha256", "size_bytes", "files")):
        return (metadata["sha256"].value, metadata["size_bytes"].value, metadata["files"].value)
    return None


RECORD_METADATA = frozenset({"path", "sha256", "size_bytes", "size_mb", "files"})  # written here


def _record_metadata(record: ArtifactRecord) -> dict[str, MetadataValue]:
    return {
        "path": MetadataValue.path(record.uri),
        "sha256": MetadataValue.text(record.sha256),
        "size_bytes": MetadataValue.int(record.size_bytes),
        "size_mb": MetadataValue.float(round(record.size_bytes / 1e6, 3)),
        "files": MetadataValue.int(record.files),
    }


class BinaryIOManager(ArtifactIOManager):
    """Stores each output (a file or a directory) at `<root>/<asset key path>/<partition>/<name>`,
    with its provenance record beside it as `<name>.provenance.json`.

    Examples:
        .. code-block:: python

            from pathlib import Path
            from dagster import Definitions, asset
            from mpegflow_dagster import BinaryIOManager

            @asset
            def clip() -> Path:
                out = Path("/tmp/clip.bin")
                out.write_bytes(b"...")
                return out

            defs = Definitions(assets=[clip], resources={"io_manager": BinaryIOManager(root="/tmp/media")})
    """

    root: str = Field(
        default=".mpegflow/storage", description="Directory that holds every published artifact."
    )

    def store(self) -> ArtifactStore:
        return LocalArtifactStore(Path(self.root))
