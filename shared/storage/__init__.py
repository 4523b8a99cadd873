"""The S3 tier beside PostgreSQL: where each image's bytes live, the images bucket, and the key
lock and orphan list that keep the two in step.

    tiers   POSTGRES or S3, object keys, the size rule
    locks   the per-key lock every write and delete holds, the orphan list
    bucket  ObjectStore: the images bucket (boto3, imported on first use)

Moving existing images between the tiers is a job (shared.jobs.tiering); storing an upload's images
is shared.scans.uploads.
"""

from typing import TYPE_CHECKING

from shared.core.front_door import lazy_exports

if TYPE_CHECKING:
    from shared.storage.bucket import PRESIGNED_GET_SECONDS, ObjectStore, clear_cache, object_store, sha256_base64
    from shared.storage.locks import forget_orphans, key_in_use, lock_keys, record_orphans
    from shared.storage.tiers import MAX_INLINE_BYTES, POSTGRES, S3, object_key, parse_object_key, tier_for
else:  # each name loads with its module on first use (shared/core/front_door.py)
    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "bucket": ("PRESIGNED_GET_SECONDS", "ObjectStore", "clear_cache", "object_store", "sha256_base64"),
            "locks": ("forget_orphans", "key_in_use", "lock_keys", "record_orphans"),
            "tiers": ("MAX_INLINE_BYTES", "POSTGRES", "S3", "object_key", "parse_object_key", "tier_for"),
        },
    )

__all__ = [
    "MAX_INLINE_BYTES",
    "POSTGRES",
    "PRESIGNED_GET_SECONDS",
    "S3",
    "ObjectStore",
    "clear_cache",
    "forget_orphans",
    "key_in_use",
    "lock_keys",
    "object_key",
    "object_store",
    "parse_object_key",
    "record_orphans",
    "sha256_base64",
    "tier_for",
]
