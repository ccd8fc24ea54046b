"""The previews store and server (no Dagster): small JPEGs the Dagster UI shows in asset metadata.

A preview is stored content-addressed as `<dir>/<sha256>.jpg` (written to a temporary name and
renamed, so a reader never sees half a file) and shown as a Markdown image whose URL is
`<url>/<sha256>.jpg`. `mpegflow previews` serves the directory read-only at that URL: only such
names, no listing, nothing else. Previews are display only: deleting the directory loses pictures,
never artifacts (a stage re-encoded, e.g. with `--force`, makes them again)."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from .storage import sha256_file

NAME = re.compile(r"[0-9a-f]{64}\.jpg")
IMMUTABLE = "public, max-age=31536000, immutable"  # a name is its content's hash


@dataclass(frozen=True)
class PreviewStore:
    directory: Path
    url: str

    def put(self, picture: Path) -> str:
        """Store the JPEG `picture` (unless a copy is there already) and return its URL."""
        sha = sha256_file(picture)
        target = self.directory / f"{sha}.jpg"
        if not target.is_file():
            self.directory.mkdir(parents=True, exist_ok=True)
            temporary = self.directory / f".{sha}.{uuid.uuid4().hex[:8]}.tmp"
            try:
                shutil.copyfile(picture, temporary)
                os.replace(temporary, target)
            finally:
                temporary.unlink(missing_ok=True)
        return f"{self.url.rstrip('/')}/{target.name}"

    def markdown(self, title: str, picture: Path) -> str:
        """The Markdown image the UI shows for `picture`, stored."""
        return f"![{title}]({self.put(picture)})"


def server(directory: Path, host: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server (call `serve_forever`) answering GET and HEAD of `/<sha256>.jpg` from
    `directory` (regular files only, links not followed) and 404 to every other path."""
    root = Path(directory)

    class Handler(BaseHTTPRequestHandler):
        server_version = "mpegflow-previews"

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            name = urlsplit(self.path).path.removeprefix("/")
            try:
                if not NAME.fullmatch(name):
                    raise FileNotFoundError(name)
                fd = os.open(root / name, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                self.send_error(HTTPStatus.NOT_FOUND, "no such preview")
                return
            with os.fdopen(fd, "rb") as fh:
                data = fh.read()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", IMMUTABLE)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if body:
                self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
            pass  # one line per picture on stderr says nothing

    return ThreadingHTTPServer((host, port), Handler)
