"""The images bucket: put, copy (checked by SHA-256), get, stream, list, delete, presign.

boto3 is imported on first use: a container that never touches S3 (no bucket, or only PostgreSQL
images) never pays for it. It comes with the Lambda Python runtime.

Inside an invocation, every S3 call gets its timeouts and attempts from the time the invocation has
left (the database's budget, shared/db/budget.py: its end less the margin to answer), so a stalled S3
costs a JSON 503 with Retry-After (StorageUnavailable), never Lambda's timeout. Outside one
(scripts, `make move-to-s3`), the fixed DEFAULT_LIMITS.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

from shared.core.config import get_settings
from shared.core.errors import ObjectMissing, StorageUnavailable
from shared.db.budget import current_budget

log = logging.getLogger(__name__)

# How long a presigned GET that a 302 points at stays valid: enough to follow the redirect.
PRESIGNED_GET_SECONDS = 60
READ_CHUNK_BYTES = 1024 * 1024


class Limits(NamedTuple):
    """The socket timeouts of one try of an S3 call, and how many tries it gets."""

    connect: float
    read: float
    attempts: int


# Outside an invocation (scripts, jobs with deadlines of their own): short connects, two tries.
DEFAULT_LIMITS = Limits(connect=2.0, read=20.0, attempts=2)
# The read timeouts an invocation's call may get (a few, so that a container makes few clients).
PER_TRY_READ_SECONDS = (16.0, 12.0, 8.0, 6.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.5)
# botocore's standard retry mode waits up to 2 s (random() * 2 ** 1) before the second try.
RETRY_BACKOFF_SECONDS = 2.0


def limits_for(left: float) -> Limits | None:
    """Limits whose worst case (every try waits out its connect and read timeouts, and the backoff
    between them) fits in `left` seconds: two tries when they fit with a read timeout of a second or
    more, each as long as fits; else one. None when not even the shortest fits."""
    for attempts, shortest in ((2, 1.0), (1, 0.5)):
        for read in PER_TRY_READ_SECONDS:
            connect = min(2.0, read / 2)
            worst = attempts * (connect + read) + (attempts - 1) * RETRY_BACKOFF_SECONDS
            if read >= shortest and worst <= left:
                return Limits(connect, read, attempts)
    return None


def current_limits() -> Limits:
    """The limits of an S3 call made now: from the invocation's time left, or DEFAULT_LIMITS outside
    one; StorageUnavailable when the invocation has no time left for one."""
    budget = current_budget()
    if budget is None or math.isinf(budget.deadline):
        return DEFAULT_LIMITS
    left = budget.deadline - time.monotonic()
    limits = limits_for(left)
    if limits is None:
        log.warning("no time left for an S3 call (%.2f s): answering 503", left)
        raise StorageUnavailable("The images bucket could not answer in the time this request has left.")
    return limits if limits.connect + limits.read < DEFAULT_LIMITS.connect + DEFAULT_LIMITS.read else DEFAULT_LIMITS


def sha256_base64(digest_hex: str) -> str:
    """The base64 form of a hex SHA-256, as S3's x-amz-checksum-sha256 carries it."""
    return base64.b64encode(bytes.fromhex(digest_hex)).decode("ascii")


class ObjectStore:
    """The images bucket. Every call raises StorageUnavailable on an S3 or network error, with
    the operation in the message and never a key's owner data or a URL's signature."""

    def __init__(self, bucket: str, client: Any = None) -> None:
        self.bucket = bucket
        self._client = client  # given: every call uses it, whatever the time left
        self._clients: dict[Limits, Any] = {}

    @property
    def client(self) -> Any:
        """A client whose timeouts and attempts fit the time this call has left (current_limits)."""
        if self._client is not None:
            return self._client
        limits = current_limits()
        client = self._clients.get(limits)
        if client is None:
            client = self._clients.setdefault(limits, _s3_client(limits))
        return client

    @property
    def signing_client(self) -> Any:
        """A client to presign with: signing is local, no request to S3, so no time limit applies."""
        if self._client is not None:
            return self._client
        return self._clients.get(DEFAULT_LIMITS) or self._clients.setdefault(DEFAULT_LIMITS, _s3_client(DEFAULT_LIMITS))

    def put(self, key: str, data: bytes, *, content_type: str, sha256: str) -> None:
        """Write an object; S3 checks the bytes against their SHA-256 and refuses a mismatch."""
        self._call(
            "put",
            self.client.put_object,
            Bucket=self.bucket,
            Key=key,
            Body=data,
            ContentType=content_type,
            ChecksumSHA256=sha256_base64(sha256),
        )

    def copy(self, source_key: str, key: str, *, content_type: str, sha256: str) -> None:
        """Copy an object within the bucket (server side, up to 5 GB) and check the copy's SHA-256.

        S3 computes the SHA-256 of the bytes it wrote (ChecksumAlgorithm) and answers it: that is
        the check, with no second read of what may be 500 MB inside a 29 s function. Only a store
        that answers no checksum has the copy read back and hashed here.
        """
        response = self._call(
            "copy",
            self.client.copy_object,
            Bucket=self.bucket,
            Key=key,
            CopySource={"Bucket": self.bucket, "Key": source_key},
            ContentType=content_type,
            MetadataDirective="REPLACE",
            ChecksumAlgorithm="SHA256",
        )
        checksum = (response.get("CopyObjectResult") or {}).get("ChecksumSHA256")
        found = base64.b64decode(checksum).hex() if checksum else self.sha256_of(key)
        if found != sha256:
            raise StorageUnavailable("The copy in the images bucket does not match its SHA-256.")

    def get(self, key: str, start: int | None = None, stop: int | None = None) -> bytes:
        """The object's bytes, or those of [start, stop)."""
        extra = {} if start is None else {"Range": f"bytes={start}-{(stop or 0) - 1}"}
        response = self._call("get", self.client.get_object, Bucket=self.bucket, Key=key, **extra)
        return bytes(self._call("get", response["Body"].read))

    def chunks(self, key: str) -> Iterator[bytes]:
        """The object's bytes in 1 MB chunks, as S3 sends them (ObjectMissing when there is none)."""
        body = self._call("get", self.client.get_object, Bucket=self.bucket, Key=key)["Body"]
        try:
            while chunk := self._call("get", body.read, READ_CHUNK_BYTES):
                yield chunk
        finally:
            body.close()

    def sha256_of(self, key: str) -> str:
        """SHA-256 (hex) of the object's bytes as S3 returns them, read in 1 MB chunks: the proof
        that a copy is whole before the only other copy is cleared."""
        digest = hashlib.sha256()
        for chunk in self.chunks(key):
            digest.update(chunk)
        return digest.hexdigest()

    def size_of(self, key: str) -> int | None:
        """An object's size from a listing of its own key, None when there is none. ListBucket, not a
        HEAD (GetObject): the cleanup job learns what it deletes without being able to read it."""
        listing = self._call("list", self.client.list_objects_v2, Bucket=self.bucket, Prefix=key, MaxKeys=2)
        sizes = [int(item["Size"]) for item in listing.get("Contents", []) if item.get("Key") == key]
        return sizes[0] if sizes else None

    def delete(self, key: str) -> None:
        """Delete an object (deleting one that is not there is no error)."""
        self._call("delete", self.client.delete_object, Bucket=self.bucket, Key=key)

    def presigned_get(self, key: str, *, content_type: str, seconds: int = PRESIGNED_GET_SECONDS) -> str:
        """A GET URL of the object valid for `seconds`, answering with this Content-Type."""
        return str(
            self._call(
                "presign",
                self.signing_client.generate_presigned_url,
                "get_object",
                Params={"Bucket": self.bucket, "Key": key, "ResponseContentType": content_type},
                ExpiresIn=seconds,
            )
        )

    def presigned_post(
        self, key: str, *, conditions: list[Any], fields: dict[str, str], seconds: int
    ) -> tuple[str, dict[str, str]]:
        """A browser's POST of one object to exactly this key (signature v4, signed here: no request
        to S3): the URL and the form fields to send before the file. boto3 adds the bucket, the key
        and the x-amz-algorithm, -credential and -date conditions to `conditions`."""
        post = self._call(
            "presign",
            self.signing_client.generate_presigned_post,
            Bucket=self.bucket,
            Key=key,
            Fields=fields,
            Conditions=conditions,
            ExpiresIn=seconds,
        )
        return str(post["url"]), {str(name): str(value) for name, value in post["fields"].items()}

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                raise ObjectMissing(f"The images bucket has no such object ({what}).") from None
            log.warning("images bucket %s refused: %s", what, _code(exc))
            raise StorageUnavailable(f"The images bucket refused a {what}: {_code(exc)}.") from None
        except (BotoCoreError, OSError) as exc:
            log.warning("images bucket %s failed: %s", what, type(exc).__name__)
            raise StorageUnavailable(f"The images bucket is unavailable ({what}).") from None


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", "error"))


_client_lock = threading.Lock()


def _s3_client(limits: Limits) -> Any:
    import boto3  # provided by the Lambda runtime; a dev dependency locally
    from botocore.config import Config

    # botocore logs request details at DEBUG (presigned URLs carry signatures): keep it at INFO.
    for name in ("botocore", "boto3"):
        logging.getLogger(name).setLevel(logging.INFO)
    with _client_lock:
        # Timeouts and attempts from the time left (current_limits): a stuck S3 call ends before the function does.
        # The bucket's regional host (<bucket>.s3.<region>.amazonaws.com) in every URL, presigned
        # ones included: the global host answers a young bucket outside us-east-1 with a redirect,
        # which a browser's CORS preflight does not follow, and the CSP names the regional host.
        # AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL), when set (moto's server in tests), wins.
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        overridden = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        regional = f"https://s3.{region}.amazonaws.com" if region and not overridden else None
        return boto3.client(
            "s3",
            endpoint_url=regional,
            config=Config(
                signature_version="s3v4",
                connect_timeout=limits.connect,
                read_timeout=limits.read,
                retries={"total_max_attempts": limits.attempts, "mode": "standard"},
                s3={"addressing_style": "virtual"},
            ),
        )


@functools.cache
def object_store() -> ObjectStore | None:
    """This container's images bucket; None when IMAGES_BUCKET is unset (PostgreSQL only)."""
    bucket = get_settings().images_bucket
    return None if bucket is None else ObjectStore(bucket)


def clear_cache() -> None:
    """Forget the bucket and its client (tests; settings changed)."""
    object_store.cache_clear()
