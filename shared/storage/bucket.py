"""The images bucket: put, copy (checked by SHA-256), get, stream, list, delete, presign.

boto3 is imported on first use: a container that never touches S3 (no bucket, or only PostgreSQL
images) never pays for it. It comes with the Lambda Python runtime.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

from shared.core.config import get_settings
from shared.core.errors import ObjectMissing, StorageUnavailable

log = logging.getLogger(__name__)

# How long a presigned GET that a 302 points at stays valid: enough to follow the redirect.
PRESIGNED_GET_SECONDS = 60
READ_CHUNK_BYTES = 1024 * 1024


def sha256_base64(digest_hex: str) -> str:
    """The base64 form of a hex SHA-256, as S3's x-amz-checksum-sha256 carries it."""
    return base64.b64encode(bytes.fromhex(digest_hex)).decode("ascii")


class ObjectStore:
    """The images bucket. Every call raises StorageUnavailable on an S3 or network error, with
    the operation in the message and never a key's owner data or a URL's signature."""

    def __init__(self, bucket: str, client: Any = None) -> None:
        self.bucket = bucket
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _s3_client()
        return self._client

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
                self.client.generate_presigned_url,
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
            self.client.generate_presigned_post,
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


def _s3_client() -> Any:
    import boto3  # provided by the Lambda runtime; a dev dependency locally
    from botocore.config import Config

    # botocore logs request details at DEBUG (presigned URLs carry signatures): keep it at INFO.
    for name in ("botocore", "boto3"):
        logging.getLogger(name).setLevel(logging.INFO)
    with _client_lock:
        # Short timeouts and two attempts: a stuck S3 call must end before the function does.
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
                connect_timeout=2,
                read_timeout=20,
                retries={"total_max_attempts": 2, "mode": "standard"},
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
