"""The S3 store: artifacts, delivery trees and source videos in S3 over a boto3 client, streamed
both ways. No Dagster here (`resources.py` and `io_manager.py` wrap it for Dagster).

`S3ArtifactStore` implements the `ArtifactStore` protocol of `storage.py` over a boto3 S3 client.
Publishing uploads every file to a private staging prefix first, then copies the files server-side
to their final keys (playlists and manifests last, so a player never reads a playlist whose
segments are not there yet), then deletes the staging objects and whatever the previous version of
the artifact had that the new one has not. Nothing is read into memory: uploads and downloads are
streamed by boto3's transfer manager (multipart above `multipart_threshold`).
"""

import hashlib
import mimetypes
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from ..media.classify import Classification
from ..media.sidecars import sidecar_language
from ..storage import ArtifactRecord, Digest, describe
from ..videos import video_key

# Where Python's registry (`mimetypes`) is wrong or missing; it knows .mpd, .m4s, .m4a, .webm, ...
CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",  # not Qt Linguist
    ".vtt": "text/vtt",
}
# Media never changes under one URL: cached for good and uploaded first. Everything else
# (playlists, manifests, storyboards) may change, is cached briefly and reaches its final key
# after the media, so a reader that finds a manifest finds what it lists, whatever its format.
IMMUTABLE_SUFFIXES = frozenset(
    {".ts", ".m4s", ".mp4", ".m4a", ".m4v", ".webm", ".jpg", ".jpeg", ".png"}
)


def content_type(name: str) -> str:
    suffix = PurePosixPath(name).suffix.lower()
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


CACHE_INDEX = ".mpegflow-etags"  # in cache_dir: one small file per cached object, "<etag> <size>"
DEFAULT_TRANSFER = TransferConfig(
    multipart_threshold=64 << 20, multipart_chunksize=16 << 20, max_concurrency=8
)

Headers = Callable[[str], dict[str, str]]


@dataclass(frozen=True)
class DeliveryHeaders:
    """Per-file `ContentType` and `CacheControl` for a CDN origin, chosen by file extension."""

    playlist_cache_control: str = "public, max-age=10"
    segment_cache_control: str = "public, max-age=31536000, immutable"

    def __call__(self, name: str) -> dict[str, str]:
        suffix = PurePosixPath(name).suffix.lower()
        return {
            "ContentType": content_type(name),
            "CacheControl": self.segment_cache_control
            if suffix in IMMUTABLE_SUFFIXES
            else self.playlist_cache_control,
        }


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key)."""
    match = re.fullmatch(r"s3://([^/]+)/(.+)", uri)
    if not match:
        raise ValueError(f"{uri!r} is not an S3 object URI: expected s3://<bucket>/<key>")
    return match.group(1), match.group(2)


def iter_objects(client: Any, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    """Every object under `prefix`, paginated with list_objects_v2 (1000 per request)."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def _is_missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


class S3ArtifactStore:
    """Artifacts in `s3://<bucket>/<prefix>/<key>`: a file is one object, a directory one object per file.

    `local_path` downloads into `cache_dir` (mirroring the keys) and skips files already cached
    with the same ETag and size. `publish` leaves `src` in place (the caller removes its scratch).

    Examples:
        .. code-block:: python

            import boto3
            from pathlib import Path, PurePosixPath
            from mpegflow_dagster.s3.store import S3ArtifactStore

            store = S3ArtifactStore(boto3.client("s3"), "media", "artifacts", Path("/tmp/cache"))
            record = store.publish(Path("out/hls"), PurePosixPath("video1/hls"))
            print(record.uri)  # s3://media/artifacts/video1/hls
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str,
        cache_dir: Path,
        *,
        headers: Optional[Headers] = None,
        transfer: TransferConfig = DEFAULT_TRANSFER,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.cache_dir = Path(cache_dir).resolve()
        self.headers: Headers = headers or (lambda name: {})
        self.transfer = transfer

    # -- keys ---------------------------------------------------------------------------------

    def _object_key(self, key: PurePosixPath) -> str:
        parts = PurePosixPath(key).parts
        if (
            not parts
            or PurePosixPath(key).is_absolute()
            or any(p in ("", ".", "..") for p in parts)
        ):
            raise ValueError(
                f"artifact key {str(key)!r} must be a relative path without '.' or '..' parts"
            )
        return "/".join([self.prefix, *parts]) if self.prefix else "/".join(parts)

    def _artifact_objects(self, final: str) -> dict[str, dict[str, Any]]:
        """The objects of the artifact at `final`: the object itself and everything under `final/`."""
        try:
            return {
                obj["Key"]: obj
                for obj in iter_objects(self.client, self.bucket, final)
                if obj["Key"] == final or obj["Key"].startswith(final + "/")
            }
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                raise FileNotFoundError(
                    f"bucket {self.bucket!r} does not exist: create it, or fix the bucket name in the configuration"
                ) from exc
            raise

    def _delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            response = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
            )
            if response.get("Errors"):
                first = response["Errors"][0]
                raise RuntimeError(
                    f"could not delete {len(response['Errors'])} object(s) in s3://{self.bucket}, e.g. "
                    f"{first.get('Key')}: {first.get('Message')}; check the credentials allow s3:DeleteObject"
                )

    def _delete_quietly(self, keys: Iterable[str]) -> None:
        """Cleanup after a failure: never hides the original error."""
        try:
            self._delete(keys)
        except (BotoCoreError, ClientError, RuntimeError):
            pass

    # -- ArtifactStore ------------------------------------------------------------------------

    def exists(self, key: PurePosixPath) -> bool:
        final = self._object_key(key)
        response = self.client.list_objects_v2(Bucket=self.bucket, Prefix=final + "/", MaxKeys=1)
        if response.get("KeyCount", 0):
            return True
        try:
            self.client.head_object(Bucket=self.bucket, Key=final)
        except ClientError as exc:
            if _is_missing(exc):
                return False
            raise
        return True

    def remove(self, key: PurePosixPath) -> None:
        self._delete(self._artifact_objects(self._object_key(key)))
        cached = self.cache_dir.joinpath(*PurePosixPath(key).parts)
        if cached.is_dir():
            shutil.rmtree(cached, ignore_errors=True)
        else:
            cached.unlink(missing_ok=True)

    def entries(self, prefix: PurePosixPath) -> dict[str, float]:
        base = self._object_key(prefix) + "/"
        found: dict[str, float] = {}
        for obj in iter_objects(self.client, self.bucket, base):
            name = obj["Key"][len(base) :].split("/", 1)[0]
            found[name] = max(found.get(name, 0.0), obj["LastModified"].timestamp())
        return found

    def publish(
        self, src: Path, key: PurePosixPath, digest: Optional[Digest] = None
    ) -> ArtifactRecord:
        src = Path(src)
        final = self._object_key(key)
        if src.is_file():
            files = [(final, src)]
        elif src.is_dir():
            files = [
                (f"{final}/{p.relative_to(src).as_posix()}", p)
                for p in sorted(src.rglob("*"))
                if p.is_file()
            ]
            if not files:
                raise ValueError(
                    f"{src} is an empty directory: S3 cannot hold it, write at least one file"
                )
        else:
            raise FileNotFoundError(
                f"nothing to publish at {src}: the asset must return an existing file or directory"
            )
        sha, size, count = digest or describe(src)
        previous = set(self._artifact_objects(final))
        # Media before playlists, so that a reader never finds a playlist naming a missing file.
        sources = dict(files)
        groups = (
            [d for d in sources if PurePosixPath(d).suffix.lower() in IMMUTABLE_SUFFIXES],
            [d for d in sources if PurePosixPath(d).suffix.lower() not in IMMUTABLE_SUFFIXES],
        )
        # Straight to the final keys when that replaces nothing but one object: S3 shows an
        # object whole or not at all (a failed upload leaves what was there), and a new tree is
        # named by nothing until this returns. A tree replacing one goes to staging keys first
        # and is then copied into place, so the old one stays whole until the new bytes are all
        # stored. (A server-side copy of a large source costs about as long again as its upload.)
        direct = src.is_file() or not previous
        staging_root = "/".join(p for p in (self.prefix, ".staging", uuid.uuid4().hex) if p)
        staged = (
            {} if direct else {d: f"{staging_root}/{d[len(final) :].lstrip('/')}" for d in sources}
        )
        started: list[str] = []  # final keys written to (the failure path removes new ones)
        try:
            with create_transfer_manager(self.client, self.transfer) as transfers:

                def upload(dests: Sequence[str]) -> None:
                    for future in [
                        transfers.upload(
                            str(sources[d]),
                            self.bucket,
                            staged.get(d, d),
                            extra_args=self.headers(d),
                        )
                        for d in dests
                    ]:
                        future.result()

                if not direct:
                    upload(list(sources))
                for group in groups:
                    started.extend(group)
                    if direct:
                        upload(group)
                    else:
                        for future in [self._copy(transfers, staged[d], d) for d in group]:
                            future.result()
            self._delete(previous - set(sources))
        except BaseException:
            # The transfer manager has finished or cancelled every transfer by now. Objects this
            # publish created at final keys go; replaced ones keep their new bytes (S3 cannot undo
            # an overwrite): the next publish makes the artifact whole again.
            self._delete_quietly([*staged.values(), *(k for k in started if k not in previous)])
            raise
        self._delete(staged.values())
        return ArtifactRecord(
            uri=f"s3://{self.bucket}/{final}",
            sha256=sha,
            size_bytes=size,
            files=count,
            is_dir=src.is_dir(),
        )

    def _copy(self, transfers: Any, source: str, dest: str) -> Any:
        headers = self.headers(dest)
        extra = {**headers, "MetadataDirective": "REPLACE"} if headers else {}
        return transfers.copy(
            {"Bucket": self.bucket, "Key": source}, self.bucket, dest, extra_args=extra
        )

    def stat(self, key: PurePosixPath) -> Optional[ArtifactRecord]:
        """Hashes the (cached) local copy: S3 ETags are not content hashes for multipart uploads."""
        try:
            path = self.local_path(key)
        except FileNotFoundError:
            return None
        sha, size, count = describe(path)
        return ArtifactRecord(
            uri=f"s3://{self.bucket}/{self._object_key(key)}",
            sha256=sha,
            size_bytes=size,
            files=count,
            is_dir=path.is_dir(),
        )

    def local_path(self, key: PurePosixPath) -> Path:
        final = self._object_key(key)
        objects = self._artifact_objects(final)
        if not objects:
            raise FileNotFoundError(
                f"no artifact at s3://{self.bucket}/{final}: materialize the upstream asset first "
                "(or check the bucket and prefix)"
            )
        dest = self.cache_dir.joinpath(*PurePosixPath(key).parts)
        tree = {k[len(final) + 1 :]: obj for k, obj in objects.items() if k != final}
        if not tree:  # a file artifact
            if dest.is_dir():
                shutil.rmtree(dest)
            self._download([(objects[final], dest)])
            return dest
        if dest.is_file():
            dest.unlink()
        self._download([(obj, dest.joinpath(*rel.split("/"))) for rel, obj in tree.items()])
        wanted = {dest.joinpath(*rel.split("/")) for rel in tree}
        for path in sorted(dest.rglob("*"), reverse=True):  # children before their directories
            if path.is_file() and path not in wanted:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        return dest

    def _index_file(self, object_key: str) -> Path:
        return (
            self.cache_dir
            / CACHE_INDEX
            / hashlib.sha256(f"{self.bucket}/{object_key}".encode()).hexdigest()
        )

    def _download(self, items: Sequence[tuple[dict[str, Any], Path]]) -> None:
        todo = []
        for obj, path in items:
            stamp = f"{obj['ETag']} {obj['Size']}"
            index = self._index_file(obj["Key"])
            fresh = path.is_file() and path.stat().st_size == obj["Size"] and index.is_file()
            if not (fresh and index.read_text() == stamp):
                todo.append((obj, path, index, stamp))
        if not todo:
            return
        (self.cache_dir / CACHE_INDEX).mkdir(parents=True, exist_ok=True)
        with create_transfer_manager(self.client, self.transfer) as transfers:
            futures = []
            for obj, path, index, stamp in todo:
                path.parent.mkdir(parents=True, exist_ok=True)
                index.unlink(missing_ok=True)
                futures.append(
                    (transfers.download(self.bucket, obj["Key"], str(path)), index, stamp)
                )
            for future, index, stamp in futures:
                future.result()
                index.write_text(stamp)


def download_source(
    s3_client: Any, uri: str, dest_dir: Path, caption_extensions: Sequence[str] = (".srt", ".vtt")
) -> Path:
    """Stream the source video at `s3://bucket/key` into `dest_dir`, with its caption sidecar.

    The local file is named `video_key(<basename>)` plus the lowercased extension (any object key
    gives a safe local name); the first existing sidecar (same key stem, one of
    `caption_extensions`) and every language-tagged one (`<stem>.<language><ext>`, see
    `media.sidecars`) are downloaded beside it with the same stem, where `stages.ingest` finds them.
    """
    bucket, key = parse_s3_uri(uri)
    name = key.rsplit("/", 1)[-1]
    suffix = PurePosixPath(name).suffix
    ext = suffix.lower() if re.fullmatch(r"\.[a-z0-9]{1,10}", suffix.lower()) else ""
    dest = Path(dest_dir) / f"{video_key(name)}{ext}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        s3_client.download_file(bucket, key, str(dest))
    except ClientError as exc:
        if _is_missing(exc):
            raise FileNotFoundError(
                f"no object at {uri}: check the bucket and key (was it deleted?)"
            ) from exc
        raise
    stem_key = key[: len(key) - len(suffix)] if suffix else key
    for caption_ext in caption_extensions:
        try:
            s3_client.download_file(
                bucket, stem_key + caption_ext, str(dest.with_suffix(caption_ext))
            )
        except ClientError as exc:
            if _is_missing(exc):
                continue
            raise
        break
    stem = stem_key.rsplit("/", 1)[-1]
    for entry in iter_objects(s3_client, bucket, f"{stem_key}."):
        name = entry["Key"].rsplit("/", 1)[-1]
        language = sidecar_language(name, stem, caption_extensions)
        if language:
            ext = name[len(stem) + 1 + len(language) :]
            s3_client.download_file(
                bucket, entry["Key"], str(dest.with_name(f"{dest.stem}.{language}{ext}"))
            )
    return dest


def classify_s3_error(exc: BaseException) -> Optional[Classification]:
    """S3 failures a retry can heal (endpoint unreachable, throttling, 5xx) and those it cannot."""
    if isinstance(
        exc, (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError)
    ):
        return Classification("transient", "network.unreachable", f"S3 endpoint unreachable: {exc}")
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        if status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout"):
            return Classification(
                "transient", "network.http_error", f"S3 answered {status} {code}: retry later"
            )
        return Classification(
            "permanent", "storage.rejected", f"S3 refused the request ({status} {code}): {exc}"
        )
    return None
