#!/usr/bin/env python3
"""Publish the web app to the stack's bucket: make publish-web STAGE=prod (after `osls deploy`).

Reads the stack's outputs (WebBucketName, WebDistributionId, WebUrl), writes the generated
config.json, uploads every file of web/ with the Content-Type and Cache-Control the local gateway
serves it with (scripts/web/assets.py, one source for both), and invalidates the entry points at
CloudFront. It never deletes: a page loaded just before a publish still finds the files its
index.html names.

config.json is {"apiBaseUrl": ""}: the distribution serves the API under /api/* on the page's own
origin (infra/web.yml), so the same files work on any stage and any domain without a rebuild.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from scripts.build.serverless_yml import read_serverless_yml
from scripts.web import assets as web_assets  # how each file of web/ is served, locally and here

ROOT = Path(__file__).resolve().parents[2]

SERVERLESS_YML = ROOT / "serverless.yml"
REQUIRED_OUTPUTS = ("WebBucketName", "WebDistributionId", "WebUrl")
# Never part of the site even when they sit in its directory.
SKIPPED_NAMES = {"node_modules", "package.json", "package-lock.json"}


class PublishError(Exception):
    """Something the operator must fix before the site can be published."""


@dataclass(frozen=True)
class StackOutputs:
    bucket: str
    distribution_id: str
    url: str


@dataclass(frozen=True)
class SiteFile:
    key: str
    body: bytes
    content_type: str
    cache_control: str


@dataclass(frozen=True)
class Site:
    files: list[SiteFile]  # in upload order
    skipped: list[str]  # kinds web_assets does not serve (the local gateway answers 404 for them too)


@dataclass(frozen=True)
class PublishReport:
    url: str
    uploaded: list[SiteFile]
    skipped: list[str]
    invalidation_id: str
    invalidated: list[str]


def _md5_etag(body: bytes) -> str:
    # S3's ETag of a single-part upload with SSE-S3 is the MD5 of its bytes (an identity, not a security check).
    return '"' + hashlib.md5(body, usedforsecurity=False).hexdigest() + '"'


def stack_name(serverless_yml: Path, stage: str) -> str:
    """The stage's CloudFormation stack name as osls derives it: provider.stackName, else service-stage."""
    config = read_serverless_yml(serverless_yml)
    service = config.get("service")
    name = (config.get("provider") or {}).get("stackName")
    if not name and isinstance(service, str):
        name = f"{service}-{stage}"
    if not isinstance(name, str) or "${" in name:
        raise PublishError(f"cannot work out the stack name from {serverless_yml} (service/provider.stackName)")
    return name


def default_region(serverless_yml: Path, env: Mapping[str, str] = os.environ) -> str:
    """AWS_REGION or AWS_DEFAULT_REGION, else the fallback in serverless.yml's ${opt:region, '...'}."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if env.get(name):
            return env[name]
    config = read_serverless_yml(serverless_yml)
    region = str((config.get("provider") or {}).get("region", ""))
    fallback = re.fullmatch(r"\$\{opt:region,\s*['\"]([a-z0-9-]+)['\"]\}", region)
    if fallback:
        return fallback.group(1)
    if re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", region):
        return region
    raise PublishError("no region: pass --region or set AWS_REGION")


def read_stack_outputs(cloudformation: Any, name: str) -> StackOutputs:
    """The web outputs of the deployed stack (CloudFormation DescribeStacks)."""
    (stack,) = cloudformation.describe_stacks(StackName=name)["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    missing = [key for key in REQUIRED_OUTPUTS if not outputs.get(key)]
    if missing:
        raise PublishError(f"stack {name} has no output {', '.join(missing)}: deploy it first (osls deploy)")
    return StackOutputs(outputs["WebBucketName"], outputs["WebDistributionId"], outputs["WebUrl"])


def site_config() -> dict[str, str]:
    """The generated config.json: the API on the page's own origin (the /api/* behaviour)."""
    return {"apiBaseUrl": ""}


def collect_site(site_dir: Path) -> Site:
    """Every file to upload, in upload order: assets, then config.json, then index.html last.

    The entry point goes last so that no visitor gets an index.html whose files are not there yet.
    A config.json in the directory (for local runs) is replaced by the generated one.
    """
    if not (site_dir / web_assets.INDEX).is_file():
        raise PublishError(f"no {web_assets.INDEX} in {site_dir}: pass --site-dir")
    assets, skipped = [], []
    for path in sorted(site_dir.rglob("*")):
        relative = path.relative_to(site_dir)
        if not path.is_file() or any(part.startswith(".") or part in SKIPPED_NAMES for part in relative.parts):
            continue
        key = relative.as_posix()
        if key in (web_assets.INDEX, web_assets.CONFIG):
            continue
        if web_assets.content_type(key) is None:
            skipped.append(key)
            continue
        assets.append(_site_file(key, path.read_bytes()))
    config = json.dumps(site_config(), separators=(",", ":")).encode()
    entry = (site_dir / web_assets.INDEX).read_bytes()
    return Site([*assets, _site_file(web_assets.CONFIG, config), _site_file(web_assets.INDEX, entry)], skipped)


def _site_file(key: str, body: bytes) -> SiteFile:
    content_type = web_assets.content_type(key) or "application/octet-stream"  # as the local gateway does
    return SiteFile(key, body, content_type, web_assets.cache_control(key))


def invalidation_paths(files: list[SiteFile]) -> list[str]:
    """The entry points ("/" is cached apart from /index.html), and any file cached for a while under its name.

    A no-cache file stays at most CachingOptimized's minimum TTL (1 s) at an edge, and an immutable
    one never changes under its name (publish() makes sure of it), so neither needs an invalidation.
    """
    entry_points = ["/", f"/{web_assets.INDEX}", f"/{web_assets.CONFIG}"]
    cached = [f"/{f.key}" for f in files if f.cache_control not in (web_assets.NO_CACHE, web_assets.IMMUTABLE)]
    return entry_points + [path for path in cached if path not in entry_points]


def publish(*, site_dir: Path, outputs: StackOutputs, s3: Any, cloudfront: Any) -> PublishReport:
    """Upload the site and the generated config.json, then invalidate what may have changed."""
    site = collect_site(site_dir)
    files = site.files
    # Checked before anything is written, so a refused publish leaves the site as it was.
    immutable = [f for f in files if f.cache_control == web_assets.IMMUTABLE]
    already_there = {f.key for f in immutable if _unchanged(s3, outputs.bucket, f)}
    uploaded = [f for f in files if f.key not in already_there]
    for site_file in uploaded:
        s3.put_object(
            Bucket=outputs.bucket,
            Key=site_file.key,
            Body=site_file.body,
            ContentType=site_file.content_type,
            CacheControl=site_file.cache_control,
        )
    paths = invalidation_paths(files)
    invalidation = cloudfront.create_invalidation(
        DistributionId=outputs.distribution_id,
        InvalidationBatch={
            "Paths": {"Quantity": len(paths), "Items": paths},
            "CallerReference": f"publish-web-{time.time_ns()}",
        },
    )
    return PublishReport(outputs.url, uploaded, site.skipped, invalidation["Invalidation"]["Id"], paths)


def _unchanged(s3: Any, bucket: str, site_file: SiteFile) -> bool:
    """True if the bucket already holds these bytes; an error if it holds others under this immutable name."""
    try:
        etag = s3.head_object(Bucket=bucket, Key=site_file.key)["ETag"]
    except s3.exceptions.ClientError as error:
        if error.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    if etag != _md5_etag(site_file.body):
        raise PublishError(
            f"{site_file.key} is cached for a year under its name, but differs from the published file of "
            "that name: a new version needs a new name (vendor/<library>-<version>/)"
        )
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", required=True, help="the stage deployed with `osls deploy --stage`")
    parser.add_argument("--region", help="default: AWS_REGION, else serverless.yml's default")
    parser.add_argument("--site-dir", type=Path, default=web_assets.WEB_ROOT, help="default: web/")
    args = parser.parse_args(argv)

    try:
        region = args.region or default_region(SERVERLESS_YML)
        name = stack_name(SERVERLESS_YML, args.stage)
        outputs = read_stack_outputs(boto3.client("cloudformation", region_name=region), name)
        report = publish(
            site_dir=args.site_dir,
            outputs=outputs,
            s3=boto3.client("s3", region_name=region),
            cloudfront=boto3.client("cloudfront"),
        )
    except (PublishError, BotoCoreError, ClientError) as error:  # no credentials, no such stack, access denied
        print(f"publish_web: {error}", file=sys.stderr)
        return 1
    for site_file in report.uploaded:
        print(f"{site_file.key:40} {len(site_file.body):>9} B  {site_file.content_type:32} {site_file.cache_control}")
    for key in report.skipped:
        print(f"{key:40} not served (no Content-Type for it in scripts/web/assets.py)")
    print(f"invalidation {report.invalidation_id}: {' '.join(report.invalidated)}")
    print(f"site: {report.url}/  (stack {name}, bucket {outputs.bucket})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
