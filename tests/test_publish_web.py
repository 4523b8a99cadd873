"""scripts/web/publish.py against moto's S3 and CloudFront; DescribeStacks through botocore's Stubber.

(moto's CloudFormation needs its full extra, which would parse and "create" the stack; the script only
reads three outputs, so a stubbed, model-validated DescribeStacks answer is the honest fake.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from scripts.web import publish as publish_web
from scripts.web.assets import IMMUTABLE, NO_CACHE
from scripts.web.publish import PublishError, StackOutputs
from tests.conftest import ROOT

REGION = "eu-central-1"
BUCKET = "ctscan-store-prod-webbucket-abc123"
VENDORED = "vendor/htm-3.1.1/htm.mjs"  # a folder named for the exact version: immutable


@pytest.fixture
def aws(fake_aws_credentials: None) -> Iterator[dict[str, Any]]:
    """moto's S3 with the site bucket, and a CloudFront distribution in front of it."""
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        cloudfront = boto3.client("cloudfront")
        distribution = cloudfront.create_distribution(
            DistributionConfig={
                "CallerReference": "test",
                "Comment": "",
                "Enabled": True,
                "Origins": {
                    "Quantity": 1,
                    "Items": [
                        {
                            "Id": "web-bucket",
                            "DomainName": f"{BUCKET}.s3.{REGION}.amazonaws.com",
                            "S3OriginConfig": {"OriginAccessIdentity": ""},
                        }
                    ],
                },
                "DefaultCacheBehavior": {"TargetOriginId": "web-bucket", "ViewerProtocolPolicy": "redirect-to-https"},
            }
        )["Distribution"]
        outputs = StackOutputs(BUCKET, distribution["Id"], f"https://{distribution['DomainName']}")
        yield {"s3": s3, "cloudfront": cloudfront, "outputs": outputs}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A site as web/ holds it: modules, vendored libraries, a local config.json, and things to leave out."""
    files = {
        "index.html": "<!doctype html><title>CT scans</title><script type=module src=js/main.js></script>",
        "config.json": '{"apiBaseUrl": "http://127.0.0.1:3000"}',
        "js/main.js": "import './viewer.js';",
        "js/viewer.js": "export {};",
        "app.css": "body{margin:0}",
        "icon.svg": "<svg xmlns='http://www.w3.org/2000/svg'/>",
        VENDORED: "export {};",
        "vendor/htm-3.1.1/LICENSE": "MIT",
        ".DS_Store": "junk",
        ".cache/x.js": "junk",
        "node_modules/preact/index.js": "junk",
        "package.json": "{}",
    }
    for name, text in files.items():
        path = tmp_path / "web" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "web"


def stored(s3: Any, key: str) -> dict[str, Any]:
    obj: dict[str, Any] = s3.get_object(Bucket=BUCKET, Key=key)
    return {"body": obj["Body"].read(), "type": obj["ContentType"], "cache": obj.get("CacheControl")}


def test_publish_writes_the_generated_config_json_over_the_local_one(aws: dict[str, Any], site: Path) -> None:
    publish_web.publish(site_dir=site, outputs=aws["outputs"], s3=aws["s3"], cloudfront=aws["cloudfront"])

    # The API is on the page's own origin (the distribution's /api/* behaviour): an empty base URL.
    config = stored(aws["s3"], "config.json")
    assert json.loads(config["body"]) == {"apiBaseUrl": ""}
    assert (config["type"], config["cache"]) == ("application/json", NO_CACHE)


def test_publish_sets_content_type_and_cache_control_per_file(aws: dict[str, Any], site: Path) -> None:
    report = publish_web.publish(site_dir=site, outputs=aws["outputs"], s3=aws["s3"], cloudfront=aws["cloudfront"])

    # As the local gateway serves them (scripts/web/assets.py): our modules are not fingerprinted,
    # so a browser revalidates them; a vendored library's versioned folder never changes.
    expected = {
        "index.html": ("text/html; charset=utf-8", NO_CACHE),
        "config.json": ("application/json", NO_CACHE),
        "js/main.js": ("text/javascript; charset=utf-8", NO_CACHE),
        "js/viewer.js": ("text/javascript; charset=utf-8", NO_CACHE),
        "app.css": ("text/css; charset=utf-8", NO_CACHE),
        "icon.svg": ("image/svg+xml", NO_CACHE),
        VENDORED: ("text/javascript; charset=utf-8", IMMUTABLE),
    }
    listed = {o["Key"] for o in aws["s3"].list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert listed == set(expected)  # no dotfiles, node_modules, package.json, or kinds not served
    assert report.skipped == ["vendor/htm-3.1.1/LICENSE"]
    for key, (content_type, cache_control) in expected.items():
        obj = stored(aws["s3"], key)
        assert (obj["type"], obj["cache"]) == (content_type, cache_control), key
        if key != "config.json":
            assert obj["body"] == (site / key).read_bytes(), key


def test_publish_uploads_index_html_last(aws: dict[str, Any], site: Path) -> None:
    report = publish_web.publish(site_dir=site, outputs=aws["outputs"], s3=aws["s3"], cloudfront=aws["cloudfront"])

    # A visitor never gets an index.html whose assets or config are not there yet.
    assert [f.key for f in report.uploaded][-2:] == ["config.json", "index.html"]


def test_publish_invalidates_the_entry_points(aws: dict[str, Any], site: Path) -> None:
    report = publish_web.publish(site_dir=site, outputs=aws["outputs"], s3=aws["s3"], cloudfront=aws["cloudfront"])

    distribution_id = aws["outputs"].distribution_id
    invalidation = aws["cloudfront"].get_invalidation(DistributionId=distribution_id, Id=report.invalidation_id)
    # "/" is cached apart from "/index.html" (the default root object). The other files are no-cache
    # (at most CachingOptimized's 1 s minimum at an edge) or never change under their name.
    assert invalidation["Invalidation"]["InvalidationBatch"]["Paths"]["Items"] == ["/", "/index.html", "/config.json"]
    assert report.url == aws["outputs"].url


def test_invalidation_paths_add_any_file_cached_for_a_while() -> None:
    files = [
        publish_web.SiteFile("js/a.js", b"", "text/javascript", "public, max-age=300"),
        publish_web.SiteFile(VENDORED, b"", "text/javascript", IMMUTABLE),
        publish_web.SiteFile("index.html", b"", "text/html", NO_CACHE),
    ]
    assert publish_web.invalidation_paths(files) == ["/", "/index.html", "/config.json", "/js/a.js"]


def test_publish_skips_an_unchanged_immutable_file_and_refuses_a_changed_one(aws: dict[str, Any], site: Path) -> None:
    publish_web.publish(site_dir=site, outputs=aws["outputs"], s3=aws["s3"], cloudfront=aws["cloudfront"])

    # Given the same vendored library again: not uploaded again
    report = publish_web.publish(site_dir=site, outputs=aws["outputs"], s3=aws["s3"], cloudfront=aws["cloudfront"])
    assert VENDORED not in {f.key for f in report.uploaded}
    assert "index.html" in {f.key for f in report.uploaded}

    # When its folder's name stays but the bytes change: browsers would keep the old ones for a year,
    # so refuse, and before anything is written
    (site / VENDORED).write_text("export const patched = 1;")
    (site / "index.html").write_text("<!doctype html><title>new</title>")
    with pytest.raises(PublishError, match=re.escape(VENDORED)):
        publish_web.publish(site_dir=site, outputs=aws["outputs"], s3=aws["s3"], cloudfront=aws["cloudfront"])
    assert b"CT scans" in stored(aws["s3"], "index.html")["body"]


def test_publish_needs_an_index_html(aws: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "app.js").write_text("")
    with pytest.raises(PublishError, match=r"no index\.html"):
        publish_web.publish(site_dir=tmp_path, outputs=aws["outputs"], s3=aws["s3"], cloudfront=aws["cloudfront"])


def test_stack_name_is_service_and_stage_unless_serverless_yml_names_it(tmp_path: Path) -> None:
    assert publish_web.stack_name(ROOT / "serverless.yml", "prod") == "ctscan-store-prod"
    named = tmp_path / "serverless.yml"
    named.write_text("service: x\nprovider:\n  stackName: clinic-web\n  vpc:\n    subnetIds: [!Ref A]\n")
    assert publish_web.stack_name(named, "prod") == "clinic-web"
    named.write_text("service: ${env:SERVICE}\n")
    with pytest.raises(PublishError, match="stack name"):
        publish_web.stack_name(named, "prod")


def test_default_region_is_the_environments_else_serverless_ymls_fallback() -> None:
    assert publish_web.default_region(ROOT / "serverless.yml", {}) == "eu-central-1"
    assert publish_web.default_region(ROOT / "serverless.yml", {"AWS_REGION": "us-east-1"}) == "us-east-1"


def describe_stacks_answer(outputs: dict[str, str]) -> dict[str, Any]:
    return {
        "Stacks": [
            {
                "StackName": "ctscan-store-prod",
                "CreationTime": "2025-01-01T00:00:00Z",
                "StackStatus": "UPDATE_COMPLETE",
                "Outputs": [{"OutputKey": key, "OutputValue": value} for key, value in outputs.items()],
            }
        ]
    }


def test_read_stack_outputs_takes_the_web_outputs(fake_aws_credentials: None) -> None:
    cloudformation = boto3.client("cloudformation", region_name=REGION)
    with Stubber(cloudformation) as stub:
        stub.add_response(
            "describe_stacks",
            describe_stacks_answer(
                {
                    "HttpApiUrl": "https://abc.execute-api.eu-central-1.amazonaws.com",
                    "WebBucketName": BUCKET,
                    "WebDistributionId": "E2EXAMPLE",
                    "WebUrl": "https://d111111abcdef8.cloudfront.net",
                }
            ),
            {"StackName": "ctscan-store-prod"},
        )
        outputs = publish_web.read_stack_outputs(cloudformation, "ctscan-store-prod")
    assert outputs == StackOutputs(BUCKET, "E2EXAMPLE", "https://d111111abcdef8.cloudfront.net")


def test_read_stack_outputs_names_what_a_stack_without_the_web_part_lacks(fake_aws_credentials: None) -> None:
    cloudformation = boto3.client("cloudformation", region_name=REGION)
    with Stubber(cloudformation) as stub:
        stub.add_response("describe_stacks", describe_stacks_answer({"WebBucketName": BUCKET}))
        with pytest.raises(PublishError, match="WebDistributionId, WebUrl"):
            publish_web.read_stack_outputs(cloudformation, "ctscan-store-prod")


def test_main_publishes_the_stages_stack(
    aws: dict[str, Any], site: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    asked = []

    def outputs_of(cloudformation: Any, name: str) -> StackOutputs:
        asked.append((cloudformation.meta.region_name, name))
        return aws["outputs"]

    monkeypatch.setattr(publish_web, "read_stack_outputs", outputs_of)
    assert publish_web.main(["--stage", "prod", "--site-dir", str(site)]) == 0

    assert asked == [(REGION, "ctscan-store-prod")]
    assert json.loads(stored(aws["s3"], "config.json")["body"]) == {"apiBaseUrl": ""}
    assert f"site: {aws['outputs'].url}/" in capsys.readouterr().out


def test_the_real_site_publishes_the_jpeg_lossless_decoder_as_javascript() -> None:
    # The viewer loads it with import(): a module script of any other type is refused by the browser.
    files = {f.key: f for f in publish_web.collect_site(ROOT / "web").files}
    decoder = files["vendor/jpeg-lossless-decoder-js-2.1.2/lossless.js"]
    assert (decoder.content_type, decoder.cache_control) == ("text/javascript; charset=utf-8", IMMUTABLE)
