"""IO manager for binary outputs: assets return a local Path, the IO manager publishes it.

Nothing is pickled and no file is read into memory: files are moved (or stream-copied) into the
store under a temporary name, hashed while streaming, and renamed into place when complete.
Downstream assets receive a local Path.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from dagster import ConfigurableIOManager, InputContext, MetadataValue, OutputContext
from pydantic import Field

from .storage import ArtifactStore, LocalArtifactStore, release_scratch

UNPARTITIONED = "__all__"


class BinaryIOManager(ConfigurableIOManager):
    """Stores each output (a file or a directory) at `<root>/<asset key path>/<partition>/<name>`.

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

    root: str = Field(".mpegflow/storage", description="Directory that holds every published artifact.")

    def store(self) -> ArtifactStore:
        return LocalArtifactStore(Path(self.root))

    @staticmethod
    def _folder(context: InputContext | OutputContext) -> PurePosixPath:
        partition = context.asset_partition_key if context.has_asset_partitions else UNPARTITIONED
        return PurePosixPath(*context.asset_key.path, partition)

    def handle_output(self, context: OutputContext, obj: Path) -> None:
        if not isinstance(obj, Path) or not obj.exists():
            raise TypeError(
                f"{context.asset_key.to_user_string()} returned {obj!r}: assets using BinaryIOManager must "
                "return the Path of a file or directory they wrote."
            )
        record = self.store().publish(obj, self._folder(context) / obj.name)
        release_scratch(obj)
        context.add_output_metadata(
            {
                "path": MetadataValue.path(record.uri),
                "sha256": MetadataValue.text(record.sha256),
                "size_bytes": MetadataValue.int(record.size_bytes),
                "size_mb": MetadataValue.float(round(record.size_bytes / 1e6, 3)),
                "files": MetadataValue.int(record.files),
            }
        )

    def load_input(self, context: InputContext) -> Path:
        folder = self.store().local_path(self._folder(context))
        entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
        if len(entries) != 1:
            raise FileNotFoundError(
                f"expected one artifact in {folder}, found {len(entries)}: re-materialize "
                f"{context.asset_key.to_user_string()} for this partition"
            )
        return entries[0]
