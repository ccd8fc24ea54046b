"""A real S3 endpoint for tests: moto's server on 127.0.0.1, spoken to over HTTP.

Import the fixtures in a test module (`from s3_server import moto_endpoint, s3, bucket`).
"""

from __future__ import annotations

import logging
import socket
import uuid
from typing import Any, Iterator

import pytest
from dagster_aws.s3 import S3Resource
from moto.server import ThreadedMotoServer

REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def s3_resource(endpoint_url: str) -> S3Resource:
    return S3Resource(
        endpoint_url=endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name=REGION,
    )


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """URL of a moto S3 server started for the test session, stopped at teardown."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(moto_endpoint: str) -> S3Resource:
    return s3_resource(moto_endpoint)


@pytest.fixture
def bucket(s3: S3Resource) -> str:
    """A fresh, empty bucket for one test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3.get_client().create_bucket(Bucket=name)
    return name


def list_keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    return sorted(
        o["Key"]
        for p in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for o in p.get("Contents", [])
    )


def seed_objects(bucket: str, keys: list[str], body: bytes = b"media") -> None:
    """Create many objects fast, straight in the server's (in-process) moto backend; every read
    the code under test makes still goes over HTTP."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for key in keys:
        backend.put_object(bucket, key, body)
