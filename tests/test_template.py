"""What matters in the CloudFormation template `make package` generates (osls package --stage ci)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from scripts.build.package_report import LAMBDA_UNZIPPED_LIMIT, unzipped_size
from scripts.dev.localgw.events import build_event
from scripts.dev.localgw.routes import load_routes
from tests.conftest import ROOT

BUILD = ROOT / ".serverless"
TEMPLATE = BUILD / "cloudformation-template-update-stack.json"
HTTP_FUNCTIONS = {"upload", "images", "render", "scans", "auth"}
OPS_FUNCTIONS = {"migrate", "admin", "cleanup", "tiering"}
FUNCTIONS = sorted(HTTP_FUNCTIONS | OPS_FUNCTIONS)
# The imaging stack, by import name: only the upload and render functions may carry it.
IMAGING_FUNCTIONS = ("render", "upload")
IMAGING_PACKAGES = ("numpy", "PIL", "cc3d", "pydicom", "pylibjpeg", "openjpeg", "rle", "jpeg_ls", "imagecodecs")
# Everything these distributions put at the top of a zip (packages, *.libs, extension modules, *.dist-info),
# lower-cased up to the first "." or "-", without a leading underscore.
IMAGING_TOP_LEVEL = {
    *(name.lower() for name in IMAGING_PACKAGES),
    "pillow",
    "connected_components_3d",
    "pylibjpeg_openjpeg",
    "pylibjpeg_rle",
    "pyjpegls",
    "charls",
}
DEV_TOOLS = (
    "tests/",
    "scripts/",
    "infra/",
    "node_modules/",
    ".venv/",
    "bin/",
    "pgserver/",
    "psutil/",
    "pydicom_data/",
    "yaml/",
    "_pytest/",
    "pytest/",
    "moto/",
    "boto3/",
    "botocore/",
    "ruff/",
    "cfnlint/",
    "mypy/",
)
CPYTHON_312_MAGIC = (3531).to_bytes(2, "little") + b"\r\n"
SECRET_ARN = {"Fn::GetAtt": ["Database", "MasterUserSecret.SecretArn"]}
IMAGE_ROUTE = "/api/v1/scans/image/*"  # the signed image route's CloudFront behaviour

if not TEMPLATE.exists():
    # CI packages before it tests (.ci/run), so there a missing template is a failure, not a skip.
    if os.environ.get("CI"):
        raise RuntimeError(f"{TEMPLATE} is missing: .ci/run must run `make package` before `make test`")
    pytest.skip("no packaged template: run `make package` first", allow_module_level=True)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(TEMPLATE.read_text())
    return loaded


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in template["Resources"].items() if res["Type"] == kind}


def function_logical_id(name: str) -> str:
    return f"{name.capitalize()}LambdaFunction"


def test_every_route_maps_to_its_function(template: dict[str, Any]) -> None:
    integrations = resources(template, "AWS::ApiGatewayV2::Integration")
    routes = resources(template, "AWS::ApiGatewayV2::Route")
    deployed = {}
    for route in routes.values():
        integration_id = route["Properties"]["Target"]["Fn::Join"][1][1]["Ref"]
        integration = integrations[integration_id]["Properties"]
        assert integration["PayloadFormatVersion"] == "2.0"
        deployed[route["Properties"]["RouteKey"]] = integration["IntegrationUri"]["Fn::GetAtt"][0]

    expected = {
        route.route_key: function_logical_id(route.function_name) for route in load_routes(ROOT / "serverless.yml")
    }
    assert deployed == expected
    assert {"POST /api/v1/scans/analyze", "HEAD /api/v1/scans/image/{scan_id}/{image_type}"} <= set(deployed)


def test_every_function_runs_in_the_private_subnets(template: dict[str, Any]) -> None:
    functions = resources(template, "AWS::Lambda::Function")
    assert set(functions) == {function_logical_id(n) for n in HTTP_FUNCTIONS | OPS_FUNCTIONS}
    for name, function in functions.items():
        vpc = function["Properties"]["VpcConfig"]
        assert vpc["SecurityGroupIds"] == [{"Ref": "LambdaSecurityGroup"}], name
        assert vpc["SubnetIds"] == [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}], name
        assert function["Properties"]["Runtime"] == "python3.12"
    # Private means no route to the internet at all.
    assert not resources(template, "AWS::EC2::InternetGateway")
    assert not resources(template, "AWS::EC2::NatGateway")
    for subnet in resources(template, "AWS::EC2::Subnet").values():
        assert subnet["Properties"]["MapPublicIpOnLaunch"] is False


def test_functions_read_database_settings_from_cloudformation_references(template: dict[str, Any]) -> None:
    for name, function in resources(template, "AWS::Lambda::Function").items():
        env = function["Properties"]["Environment"]["Variables"]
        assert env["DB_SECRET_ARN"] == SECRET_ARN, name
        assert env["DB_HOST"] == {"Fn::GetAtt": ["DatabaseProxy", "Endpoint"]}, name
        assert env["DB_SSLMODE"] == "verify-full", name
        assert "DATABASE_URL" not in env and "PGPASSWORD" not in env


def test_cleanup_runs_nightly_on_a_schedule_and_has_time_for_a_vacuum(template: dict[str, Any]) -> None:
    function = template["Resources"][function_logical_id("cleanup")]["Properties"]
    assert function["Timeout"] == 900 and function["MemorySize"] == 256
    target = {"Fn::GetAtt": [function_logical_id("cleanup"), "Arn"]}
    rules = [
        rule["Properties"]
        for rule in resources(template, "AWS::Events::Rule").values()
        if any(t["Arn"] == target for t in rule["Properties"]["Targets"])
    ]
    assert [(r["ScheduleExpression"], r["State"]) for r in rules] == [("cron(30 3 * * ? *)", "ENABLED")]
    permissions = [
        p["Properties"]
        for p in resources(template, "AWS::Lambda::Permission").values()
        if p["Properties"]["FunctionName"] == target
    ]
    assert [p["Principal"] for p in permissions] == ["events.amazonaws.com"]
    # Only cleanup runs on a schedule.
    assert len(resources(template, "AWS::Events::Rule")) == 1


def test_database_is_encrypted_private_and_its_password_lives_in_secrets_manager(template: dict[str, Any]) -> None:
    (database,) = resources(template, "AWS::RDS::DBInstance").values()
    props = database["Properties"]
    assert props["StorageEncrypted"] is True
    assert props["ManageMasterUserPassword"] is True
    assert "MasterUserPassword" not in props
    assert props["PubliclyAccessible"] is False
    assert props["BackupRetentionPeriod"] >= 7
    assert database["DeletionPolicy"] == "Snapshot"
    parameters = resources(template, "AWS::RDS::DBParameterGroup")["DatabaseParameterGroup"]["Properties"]
    assert parameters["Parameters"]["rds.force_ssl"] == "1"


def test_rds_proxy_requires_tls_and_reads_the_managed_secret(template: dict[str, Any]) -> None:
    (proxy,) = resources(template, "AWS::RDS::DBProxy").values()
    assert proxy["Properties"]["RequireTLS"] is True
    assert [auth["SecretArn"] for auth in proxy["Properties"]["Auth"]] == [SECRET_ARN]


def test_only_the_lambdas_reach_the_database_port(template: dict[str, Any]) -> None:
    ingress = resources(template, "AWS::EC2::SecurityGroupIngress")
    groups = resources(template, "AWS::EC2::SecurityGroup")
    to_port_5432 = {}
    for rule in ingress.values():
        props = rule["Properties"]
        if props["FromPort"] <= 5432 <= props["ToPort"]:
            to_port_5432[props["GroupId"]["Ref"]] = props.get("SourceSecurityGroupId", {}).get("Ref")
            assert "CidrIp" not in props and "CidrIpv6" not in props
    # Lambdas -> proxy -> database, and nothing else on the database port.
    assert to_port_5432 == {"ProxySecurityGroup": "LambdaSecurityGroup", "DatabaseSecurityGroup": "ProxySecurityGroup"}
    for name, group in groups.items():
        assert "SecurityGroupIngress" not in group["Properties"], name  # all ingress is listed above
    (proxy,) = resources(template, "AWS::RDS::DBProxy").values()
    assert proxy["Properties"]["VpcSecurityGroupIds"] == [{"Ref": "ProxySecurityGroup"}]
    (database,) = resources(template, "AWS::RDS::DBInstance").values()
    assert database["Properties"]["VPCSecurityGroups"] == [{"Ref": "DatabaseSecurityGroup"}]


SIGNING_SECRET = {"Ref": "ImageUrlSigningSecret"}
ORIGIN_SECRET = {"Ref": "OriginVerifySecret"}
AUDIT_SECRET = {"Ref": "AuditQueryKeySecret"}
# The functions that hash DICOMweb search values (images) or look them up in the audit trail (admin).
AUDIT_KEY_FUNCTIONS = {"images", "admin"}
# The functions that sign image URLs (upload, scans) or verify them (images).
SIGNING_FUNCTIONS = {"upload", "scans", "images"}
# Each function's role (infra/roles.yml); admin runs with the framework's: the database secret and the
# audit query key only.
ROLES = {
    "upload": "UploadLambdaRole",
    "images": "ImagesLambdaRole",
    "render": "RenderLambdaRole",
    "scans": "ScansLambdaRole",
    "auth": "AuthLambdaRole",
    "cleanup": "CleanupLambdaRole",
    "tiering": "TieringLambdaRole",
    "migrate": "MigrateLambdaRole",
    "admin": "IamRoleLambdaExecution",
}


def role_statements(template: dict[str, Any], logical_id: str) -> list[dict[str, Any]]:
    role = template["Resources"][logical_id]["Properties"]
    return [s for policy in role["Policies"] for s in policy["PolicyDocument"]["Statement"]]


@pytest.mark.parametrize(
    ("role", "secrets"),
    [
        ("IamRoleLambdaExecution", [SECRET_ARN, AUDIT_SECRET]),
        ("UploadLambdaRole", [SECRET_ARN, SIGNING_SECRET, ORIGIN_SECRET]),
        ("ImagesLambdaRole", [SECRET_ARN, SIGNING_SECRET, ORIGIN_SECRET, AUDIT_SECRET]),
        ("RenderLambdaRole", [SECRET_ARN, ORIGIN_SECRET]),
        ("ScansLambdaRole", [SECRET_ARN, SIGNING_SECRET, ORIGIN_SECRET]),
        ("AuthLambdaRole", [SECRET_ARN, ORIGIN_SECRET]),
        ("CleanupLambdaRole", [SECRET_ARN]),
        ("TieringLambdaRole", [SECRET_ARN]),
        ("MigrateLambdaRole", [SECRET_ARN]),
    ],
)
def test_each_lambda_role_may_read_only_its_secrets(
    template: dict[str, Any], role: str, secrets: list[dict[str, Any]]
) -> None:
    statements = role_statements(template, role)
    secret_statements = [s for s in statements if any(a.startswith("secretsmanager:") for a in s["Action"])]
    assert secret_statements == [{"Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"], "Resource": secrets}]
    for statement in statements:
        assert statement["Resource"] != "*" and "*" not in statement["Resource"], statement
        assert not any(action.endswith(":*") or action == "*" for action in statement["Action"]), statement
    managed = json.dumps(template["Resources"][role]["Properties"]["ManagedPolicyArns"])
    assert "AWSLambdaVPCAccessExecutionRole" in managed  # ENIs in the private subnets, and logs


def test_each_function_runs_with_its_own_role(template: dict[str, Any]) -> None:
    functions = resources(template, "AWS::Lambda::Function")
    assert set(functions) == {function_logical_id(n) for n in ROLES}
    for name, role in ROLES.items():
        assert functions[function_logical_id(name)]["Properties"]["Role"] == {"Fn::GetAtt": [role, "Arn"]}, name
    # Every role in the stack is one of these (plus the RDS Proxy's), none left over.
    assert set(resources(template, "AWS::IAM::Role")) == {*ROLES.values(), "DatabaseProxyRole"}


def test_image_url_signing_key_is_generated_by_the_stack_and_given_to_the_url_functions(
    template: dict[str, Any],
) -> None:
    # Only the functions that sign or verify URLs may read the key (their role) and are told where it is.
    secret = template["Resources"]["ImageUrlSigningSecret"]
    assert secret["Type"] == "AWS::SecretsManager::Secret"
    generated = secret["Properties"]["GenerateSecretString"]
    assert generated["GenerateStringKey"] == "secret"
    assert json.loads(generated["SecretStringTemplate"]) == {}
    assert generated["PasswordLength"] >= 32  # shared.auth.signing.MIN_SECRET_BYTES
    assert "SecretString" not in secret["Properties"]
    for name, function in resources(template, "AWS::Lambda::Function").items():
        env = function["Properties"]["Environment"]["Variables"]
        if name in {function_logical_id(n) for n in SIGNING_FUNCTIONS}:
            assert env["IMAGE_URL_SECRET_ARN"] == SIGNING_SECRET, name
        else:
            assert "IMAGE_URL_SECRET_ARN" not in env, name


def test_audit_query_key_is_generated_kept_and_given_to_the_functions_that_hash(template: dict[str, Any]) -> None:
    # The trail's search rows are unanswerable without it: it outlives the stack and any replacement.
    secret = template["Resources"]["AuditQueryKeySecret"]
    assert secret["Type"] == "AWS::SecretsManager::Secret"
    assert secret["DeletionPolicy"] == "Retain" and secret["UpdateReplacePolicy"] == "Retain"
    generated = secret["Properties"]["GenerateSecretString"]
    assert generated["GenerateStringKey"] == "secret"
    assert json.loads(generated["SecretStringTemplate"]) == {}
    assert generated["PasswordLength"] >= 32  # shared.auth.signing.MIN_SECRET_BYTES
    assert "SecretString" not in secret["Properties"]
    assert template["Outputs"]["AuditQueryKeySecretArn"]["Value"] == AUDIT_SECRET
    for name, function in resources(template, "AWS::Lambda::Function").items():
        env = function["Properties"]["Environment"]["Variables"]
        if name in {function_logical_id(n) for n in AUDIT_KEY_FUNCTIONS}:
            assert env["AUDIT_KEY_SECRET_ARN"] == AUDIT_SECRET, name
        else:
            assert "AUDIT_KEY_SECRET_ARN" not in env, name


def test_no_layers(template: dict[str, Any]) -> None:
    assert not resources(template, "AWS::Lambda::LayerVersion")
    for function in resources(template, "AWS::Lambda::Function").values():
        assert "Layers" not in function["Properties"]


def test_http_functions_fit_the_http_api_timeout_and_migrate_has_no_events(template: dict[str, Any]) -> None:
    functions = resources(template, "AWS::Lambda::Function")
    for name in HTTP_FUNCTIONS:
        assert functions[function_logical_id(name)]["Properties"]["Timeout"] <= 30, name
    assert functions["MigrateLambdaFunction"]["Properties"]["Timeout"] > 30
    permissions = resources(template, "AWS::Lambda::Permission")
    assert not any(
        p["Properties"]["FunctionName"]["Fn::GetAtt"][0] == "MigrateLambdaFunction" for p in permissions.values()
    )
    integrations = resources(template, "AWS::ApiGatewayV2::Integration")
    assert "MigrateLambdaFunction" not in {
        i["Properties"]["IntegrationUri"]["Fn::GetAtt"][0] for i in integrations.values()
    }


def test_cors_allows_named_origins_only(template: dict[str, Any]) -> None:
    cors = template["Resources"]["HttpApi"]["Properties"]["CorsConfiguration"]
    assert cors["AllowOrigins"] and "*" not in cors["AllowOrigins"]
    assert "Authorization" in cors["AllowHeaders"]
    assert "ETag" in cors["ExposeHeaders"]


def test_outputs_name_the_api_url_and_database_endpoint(template: dict[str, Any]) -> None:
    assert {"HttpApiUrl", "DatabaseEndpoint", "DatabaseProxyEndpoint"} <= set(template["Outputs"])


# The web app (infra/web.yml): a private bucket behind CloudFront with Origin Access Control, and the
# HTTP API under /api/* on the same distribution. CloudFront's managed policies, by their fixed ids:
CACHING_OPTIMIZED = "658327ea-f89d-4fab-a63d-7e88639e58f6"
CACHING_DISABLED = "4135ea2d-6df8-44a3-9df3-4b5a84be39ad"
ALL_VIEWER_EXCEPT_HOST_HEADER = "b689b0a8-53d0-40ab-baf2-68738e2966ac"
WEB_BUCKET_ARN = {"Fn::GetAtt": ["WebBucket", "Arn"]}
WEB_BUCKET_OBJECTS = {"Fn::Join": ["", [WEB_BUCKET_ARN, "/*"]]}


def distribution_config(template: dict[str, Any]) -> dict[str, Any]:
    (distribution,) = resources(template, "AWS::CloudFront::Distribution").values()
    config: dict[str, Any] = distribution["Properties"]["DistributionConfig"]
    return config


def references(value: Any) -> set[str]:
    """Every resource a Ref or Fn::GetAtt anywhere inside value points at (pseudo parameters aside)."""
    if isinstance(value, dict):
        found = set().union(*(references(v) for v in value.values())) if value else set()
        if isinstance(value.get("Ref"), str) and not value["Ref"].startswith("AWS::"):  # not pseudo parameters
            found.add(value["Ref"])
        if isinstance(value.get("Fn::GetAtt"), list):
            found.add(value["Fn::GetAtt"][0])
        return found
    if isinstance(value, list):
        return set().union(*(references(v) for v in value)) if value else set()
    return set()


def test_web_bucket_is_private_encrypted_and_owner_enforced(template: dict[str, Any]) -> None:
    buckets = resources(template, "AWS::S3::Bucket")
    props = buckets["WebBucket"]["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms"}
    assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    # Not a website endpoint (plain HTTP, public by design) and no ACLs.
    assert "WebsiteConfiguration" not in props and "AccessControl" not in props


def test_web_bucket_policy_lets_only_this_distribution_read_and_only_over_tls(template: dict[str, Any]) -> None:
    policies = [p["Properties"] for p in resources(template, "AWS::S3::BucketPolicy").values()]
    (policy,) = [p for p in policies if p["Bucket"] == {"Ref": "WebBucket"}]
    statements = policy["PolicyDocument"]["Statement"]
    (allow,) = [s for s in statements if s["Effect"] == "Allow"]
    assert allow["Principal"] == {"Service": "cloudfront.amazonaws.com"}
    assert allow["Action"] in ("s3:GetObject", ["s3:GetObject"])
    assert allow["Resource"] == WEB_BUCKET_OBJECTS
    (source_arn,) = allow["Condition"]["StringEquals"].values()
    assert list(allow["Condition"]["StringEquals"]) == ["AWS:SourceArn"]
    assert references(source_arn) == {"WebDistribution"}
    assert ":cloudfront::" in json.dumps(source_arn) and ":distribution/" in json.dumps(source_arn)
    (deny,) = [s for s in statements if s["Effect"] == "Deny"]
    assert deny["Principal"] == "*" and deny["Action"] == "s3:*"
    assert deny["Resource"] == [WEB_BUCKET_ARN, WEB_BUCKET_OBJECTS]
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_origin_access_control_signs_every_s3_request_with_sigv4(template: dict[str, Any]) -> None:
    (oac,) = resources(template, "AWS::CloudFront::OriginAccessControl").values()
    config = oac["Properties"]["OriginAccessControlConfig"]
    assert config["SigningBehavior"] == "always"
    assert config["SigningProtocol"] == "sigv4"
    assert config["OriginAccessControlOriginType"] == "s3"


def test_site_origin_is_the_bucket_through_oac_not_a_legacy_oai(template: dict[str, Any]) -> None:
    config = distribution_config(template)
    (origin,) = [o for o in config["Origins"] if "S3OriginConfig" in o]
    assert origin["DomainName"] == {"Fn::GetAtt": ["WebBucket", "RegionalDomainName"]}
    assert origin["OriginAccessControlId"] == {"Fn::GetAtt": ["WebOriginAccessControl", "Id"]}
    assert origin["S3OriginConfig"]["OriginAccessIdentity"] == ""
    assert not resources(template, "AWS::CloudFront::CloudFrontOriginAccessIdentity")
    default = config["DefaultCacheBehavior"]
    assert default["TargetOriginId"] == origin["Id"]
    assert default["CachePolicyId"] == CACHING_OPTIMIZED
    assert default["AllowedMethods"] == ["GET", "HEAD"]


def test_distribution_serves_index_html_over_https_only(template: dict[str, Any]) -> None:
    config = distribution_config(template)
    assert config["Enabled"] is True
    assert config["DefaultRootObject"] == "index.html"
    assert config["HttpVersion"] == "http2and3"
    assert config["DefaultCacheBehavior"]["ViewerProtocolPolicy"] == "redirect-to-https"
    for behavior in config.get("CacheBehaviors", []):
        assert behavior["ViewerProtocolPolicy"] in {"redirect-to-https", "https-only"}, behavior["PathPattern"]
    # Error pages would apply to the API's answers too.
    assert "CustomErrorResponses" not in config


def test_api_is_on_the_pages_origin_under_api_uncached(template: dict[str, Any]) -> None:
    config = distribution_config(template)
    (api,) = [b for b in config["CacheBehaviors"] if b["PathPattern"] == "/api/*"]
    (origin,) = [o for o in config["Origins"] if o["Id"] == api["TargetOriginId"]]
    assert references(origin["DomainName"]) == {"HttpApi"}
    assert ".execute-api." in json.dumps(origin["DomainName"])
    assert origin["CustomOriginConfig"]["OriginProtocolPolicy"] == "https-only"
    assert origin["CustomOriginConfig"]["OriginReadTimeout"] >= 30  # the HTTP API's own limit
    assert api["CachePolicyId"] == CACHING_DISABLED
    # API Gateway needs its own Host; with caching disabled this policy also forwards Authorization.
    assert api["OriginRequestPolicyId"] == ALL_VIEWER_EXCEPT_HOST_HEADER
    assert {"GET", "HEAD", "OPTIONS", "POST", "DELETE"} <= set(api["AllowedMethods"])
    assert api["ViewerProtocolPolicy"] == "https-only"  # a redirected POST would lose its body


def test_no_access_log_keeps_the_query_strings_of_dicomweb_searches(template: dict[str, Any]) -> None:
    # QIDO-RS puts patient names in query strings (PatientName=DOE*): no log may keep them.
    # CloudFront's standard and real-time logs always record the query string: neither is on.
    config = distribution_config(template)
    assert "Logging" not in config
    for behavior in [config["DefaultCacheBehavior"], *config["CacheBehaviors"]]:
        assert "RealtimeLogConfigArn" not in behavior, behavior.get("PathPattern")
    assert not resources(template, "AWS::CloudFront::RealtimeLogConfig")
    # API Gateway's access log (none today): its $context.path and $context.routeKey hold no query
    # string; a format that names one ($input.params(), a querystring variable) may not be added.
    for stage in resources(template, "AWS::ApiGatewayV2::Stage").values():
        log_format = json.dumps(stage["Properties"].get("AccessLogSettings", {}).get("Format", ""))
        assert "querystring" not in log_format.lower() and "$input" not in log_format, log_format
    # Nor do the HTTP functions' own request log lines (shared.core.observability logs the route template).


def test_signed_image_urls_point_at_the_distribution(template: dict[str, Any]) -> None:
    # upload and scans build absolute image URLs (shared.http.base_url): on the page's origin, not execute-api.
    functions = resources(template, "AWS::Lambda::Function")
    for name in ("upload", "scans"):
        base = functions[function_logical_id(name)]["Properties"]["Environment"]["Variables"]["API_BASE_URL"]
        assert base == {"Fn::Join": ["", ["https://", {"Fn::GetAtt": ["WebDistribution", "DomainName"]}]]}, name
    assert template["Outputs"]["WebUrl"]["Value"] == base


def response_headers_policies(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each behaviour's response headers policy config, by the behaviour's path pattern ("" for the default)."""
    config = distribution_config(template)
    behaviors = [config["DefaultCacheBehavior"], *config["CacheBehaviors"]]
    policies = {}
    for behavior in behaviors:
        (name,) = references(behavior["ResponseHeadersPolicyId"])
        policies[behavior.get("PathPattern", "")] = template["Resources"][name]["Properties"][
            "ResponseHeadersPolicyConfig"
        ]
    return policies


@pytest.mark.parametrize("pattern", ["", "/api/*", IMAGE_ROUTE])
def test_every_response_carries_the_security_headers(template: dict[str, Any], pattern: str) -> None:
    policies = response_headers_policies(template)
    assert set(policies) == {"", "/api/*", IMAGE_ROUTE}
    policy = policies[pattern]
    # One set of security headers for every behaviour: the signed image route's policy differs only
    # in its Cache-Control (test_signed_image_viewers_get_private_in_place_of_the_origins_cache_control).
    assert policy["SecurityHeadersConfig"] == policies[""]["SecurityHeadersConfig"]
    custom = [item for item in policy["CustomHeadersConfig"]["Items"] if item["Header"] != "Cache-Control"]
    assert custom == policies[""]["CustomHeadersConfig"]["Items"]
    headers = policy["SecurityHeadersConfig"]
    assert headers["StrictTransportSecurity"]["AccessControlMaxAgeSec"] >= 31536000
    assert headers["ContentTypeOptions"]["Override"] is True
    assert headers["FrameOptions"]["FrameOption"] == "DENY"
    assert headers["ReferrerPolicy"]["ReferrerPolicy"] in {"no-referrer", "same-origin", "strict-origin"}
    csp_parts = headers["ContentSecurityPolicy"]["ContentSecurityPolicy"]["Fn::Join"][1]
    csp = "".join(part if isinstance(part, str) else "<ref>" for part in csp_parts)
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert directives["default-src"] == ["'none'"]
    assert directives["script-src"] == ["'self'"]  # no inline script, no CDN
    assert directives["frame-ancestors"] == ["'none'"]
    api_origin = "https://<ref>.execute-api.<ref>.<ref>"
    # The images bucket by its own regional host (302s to presigned GETs, presigned POSTs), never *.s3.
    bucket_origin = "https://ctscan-store-ci-images-<ref>-<ref>.s3.<ref>.<ref>"
    assert directives["connect-src"] == ["'self'", api_origin, bucket_origin]
    assert directives["img-src"][0] == "'self'" and api_origin in directives["img-src"]
    assert bucket_origin in directives["img-src"]
    assert references(csp_parts) == {"HttpApi"}
    bucket_name = template["Resources"]["ImagesBucket"]["Properties"]["BucketName"]
    assert bucket_name == {
        "Fn::Join": ["-", ["ctscan-store-ci-images", {"Ref": "AWS::AccountId"}, {"Ref": "AWS::Region"}]]
    }


def test_signed_image_viewers_get_private_in_place_of_the_origins_cache_control(template: dict[str, Any]) -> None:
    # The images function answers a signed URL with s-maxage (CloudFront's copy) and Expires; viewers
    # get `private` instead, so nothing past the CDN shares the bytes (shared/http/image_responses.py).
    policies = response_headers_policies(template)
    for pattern, policy in policies.items():
        cache_control = [i for i in policy["CustomHeadersConfig"]["Items"] if i["Header"].lower() == "cache-control"]
        expected = [{"Header": "Cache-Control", "Value": "private", "Override": True}] if pattern == IMAGE_ROUTE else []
        assert cache_control == expected, pattern


def test_outputs_name_the_web_bucket_distribution_and_url(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert outputs["WebBucketName"]["Value"] == {"Ref": "WebBucket"}
    assert outputs["WebDistributionId"]["Value"] == {"Ref": "WebDistribution"}
    assert references(outputs["WebUrl"]["Value"]) == {"WebDistribution"}


def archive(name: str) -> Path:
    return BUILD / f"{name}.zip"


def top_level(names: set[str]) -> set[str]:
    return {name.split("/", 1)[0] for name in names}


def zip_names(name: str) -> set[str]:
    with zipfile.ZipFile(archive(name)) as zipped:
        return set(zipped.namelist())


def test_each_function_deploys_its_own_zip(template: dict[str, Any]) -> None:
    functions = resources(template, "AWS::Lambda::Function")
    for name in FUNCTIONS:
        code = functions[function_logical_id(name)]["Properties"]["Code"]
        assert code["S3Key"].endswith(f"/{name}.zip"), (name, code)
        assert archive(name).is_file(), name


@pytest.mark.parametrize("name", FUNCTIONS)
def test_package_is_under_lambdas_unzipped_limit_and_holds_its_code(name: str) -> None:
    size = unzipped_size(archive(name))
    assert size < LAMBDA_UNZIPPED_LIMIT, f"{name}: {size / 1e6:.1f} MB"
    names = zip_names(name)
    for required in (
        f"functions/{name}/handler.py",
        "functions/__init__.py",
        "shared/db/__init__.py",
        "migrations/001_create_scans.sql",
        "pg8000/native.py",
        "mangum/adapter.py",
    ):
        assert required in names, (name, required)
    # Keep *.dist-info: scramp reads its own version from its metadata at import time.
    assert any(n.startswith("scramp-") and n.endswith(".dist-info/METADATA") for n in names), name
    others = {f"functions/{other}/" for other in FUNCTIONS if other != name}
    assert not any(n.startswith(tuple(others)) for n in names), f"{name} carries another function's handler"
    for forbidden in DEV_TOOLS:
        assert not any(n.startswith(forbidden) for n in names), (name, forbidden)
    # Left out on purpose (scripts/build/lambda_packages.py, OMIT): FastAPI imports it only to reject v1 models.
    assert not any(n.startswith("pydantic/v1/") for n in names), name


# The migrate function's DICOMweb backfill describes DICOM files with pydicom (pure Python), as upload does.
PYDICOM_ALONE = {"pydicom", "pydicom-3.0.2.dist-info"}


@pytest.mark.parametrize("name", sorted(set(FUNCTIONS) - set(IMAGING_FUNCTIONS)))
def test_only_the_upload_and_render_functions_carry_the_imaging_stack(name: str) -> None:
    tops = top_level(zip_names(name))
    imaging = {top for top in tops if top.lstrip("_").lower().split(".")[0].split("-")[0] in IMAGING_TOP_LEVEL}
    assert imaging == (PYDICOM_ALONE if name == "migrate" else set()), f"{name} carries {sorted(imaging)}"
    # Only upload (and render, from the same requirements file) parse multipart bodies; starlette
    # imports python_multipart only if it is there.
    assert not tops & {"python_multipart", "multipart"}, name


def test_the_images_function_carries_neither_fastapi_nor_pydantic() -> None:
    # The hot read path is plain Starlette: FastAPI's import alone is most of a cold start.
    assert not top_level(zip_names("images")) & {"fastapi", "pydantic", "pydantic_core"}
    assert "starlette/applications.py" in zip_names("images")


def test_a_function_carries_only_the_shared_modules_it_imports() -> None:
    # scripts/build/lambda_packages.py stages the import closure of each handler, not all of shared/.
    images, upload, migrate = zip_names("images"), zip_names("upload"), zip_names("migrate")
    assert not any(n.startswith(("shared/imaging/", "shared/jobs/")) for n in images)
    assert "shared/http/app.py" not in images and "shared/scans/uploads.py" not in images
    assert "shared/imaging/dicom.py" in upload and "shared/scans/direct_uploads.py" in upload
    assert "shared/db/migrations.py" in migrate and not any(n.startswith("shared/http/") for n in migrate)
    # The backfill's lazy imports (pydicom on the first file to describe) are in the zip too.
    assert {"shared/jobs/dicomweb_backfill.py", "shared/scans/instances.py", "shared/dicom/describe.py"} <= migrate
    assert not any(n.startswith("shared/imaging/") for n in migrate) and "shared/scans/uploads.py" not in migrate


def _our_imports(source: str) -> list[tuple[str, str | None]]:
    """(module, name) for each `import module` (name None) and `from module import name` of ours."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.module, alias.name) for alias in node.names]
    return [(module, name) for module, name in found if module.split(".")[0] in ("shared", "functions")]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_every_import_of_ours_in_a_package_finds_its_module_there(name: str) -> None:
    """Leaving modules out of a zip must never leave an import behind that fails in Lambda (some
    run only on one path, inside a function: a cold start would not show it)."""

    def is_module(names: set[str], dotted: str) -> bool:
        path = dotted.replace(".", "/")
        return f"{path}.py" in names or f"{path}/__init__.py" in names

    with zipfile.ZipFile(archive(name)) as zipped:
        names = set(zipped.namelist())
        ours = [n for n in names if n.endswith(".py") and n.startswith(("shared/", "functions/"))]
        missing = set()
        for source in ours:
            for module, attribute in _our_imports(zipped.read(source).decode()):
                if not is_module(names, module):
                    missing.add(f"{source}: {module}")
                elif (
                    attribute is not None
                    and is_module(ROOT_NAMES, f"{module}.{attribute}")
                    and not is_module(names, f"{module}.{attribute}")
                ):
                    missing.add(f"{source}: {module}.{attribute}")
    assert not missing, sorted(missing)


ROOT_NAMES = {path.relative_to(ROOT).as_posix() for path in (ROOT / "shared").rglob("*.py")}


@pytest.mark.parametrize("name", IMAGING_FUNCTIONS)
def test_the_upload_and_render_functions_carry_the_imaging_stack(name: str) -> None:
    names = zip_names(name)
    for package in (*IMAGING_PACKAGES, "python_multipart"):
        assert f"{package}/__init__.py" in names, package
    assert any(n.startswith("numpy.libs/") for n in names)  # numpy's OpenBLAS, never stripped


def compiled_name(source: str) -> str:
    folder, _, module = source.rpartition("/")
    return f"{folder}/__pycache__/{module[:-3]}.cpython-312.pyc".removeprefix("/")


@pytest.mark.parametrize("name", FUNCTIONS)
def test_package_carries_cpython_312_bytecode_for_every_module(name: str) -> None:
    """Checked-hash .pyc for our code (an edit is never masked), unchecked-hash for the pinned libraries.

    Every module, top-level ones too: typing_extensions.py once shipped without its .pyc and cost each
    cold start ~25 ms of compiling.
    """
    with zipfile.ZipFile(archive(name)) as zipped:
        names = set(zipped.namelist())
        sources = sorted(n for n in names if n.endswith(".py"))
        assert not [s for s in sources if compiled_name(s) not in names]
        for source in [s for s in sources if s.startswith(("functions/", "shared/"))] + ["typing_extensions.py"]:
            header = zipped.read(compiled_name(source))[:8]
            checked = source.startswith(("functions/", "shared/"))
            assert header[:4] == CPYTHON_312_MAGIC, source
            assert int.from_bytes(header[4:8], "little") == (0b11 if checked else 0b01), source


def lambda_python() -> str:
    python = subprocess.run(
        [str(ROOT / "scripts" / "build" / "find-lambda-python.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()
    if not python:
        if os.environ.get("CI"):
            raise AssertionError("no CPython 3.12 on the CI machine to import the packages with")
        pytest.skip("no CPython 3.12 here to import the Lambda packages with")
    return python


# Runs inside one function's unpacked zip under CPython 3.12: imports the handler, checks that our
# bytecode is current (it is what Lambda will run), and calls the handler with a request that needs no
# database (401: no token), so Mangum, FastAPI and our error handling run from the package too.
SMOKE = """
import importlib, importlib.util, json, sys
sys.path.insert(0, '.')
name, event = sys.argv[1], json.loads(sys.argv[2])
module = importlib.import_module(f'functions.{name}.handler')
stale = []
for loaded in list(sys.modules.values()):
    if getattr(loaded, '__name__', '').startswith(('shared', 'functions')) and getattr(loaded, '__file__', None):
        source = open(loaded.__file__, 'rb').read()
        header = open(loaded.__cached__, 'rb').read()[:16]
        if header[:4] != importlib.util.MAGIC_NUMBER or header[8:16] != importlib.util.source_hash(source):
            stale.append(loaded.__name__)
class Context:
    function_name, aws_request_id, memory_limit_in_mb = name, 'smoke', 1024
    def get_remaining_time_in_millis(self): return 10_000
result = module.handler(event, Context()) if event is not None else None
heavy = sorted(m for m in ('numpy', 'PIL', 'pydicom', 'cc3d', 'imagecodecs', 'python_multipart') if m in sys.modules)
print(json.dumps({'python': list(sys.version_info[:2]), 'no_pyc_written': sys.flags.dont_write_bytecode,
                  'stale': stale, 'result': result, 'heavy': heavy}))
"""

# The upload function's own analysis, from its zip: a PNG, and a DICOM CT slice built here, stored
# uncompressed and with each lossless codec we ship, so every codec's native library loads from the zip.
ANALYZE = """
import io, sys
sys.path.insert(0, '.')
import imagecodecs
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless,
                         RLELossless, generate_uid)
from shared.imaging import analyze_upload

picture = Image.new('L', (64, 64), 20)
picture.paste(200, (10, 10, 30, 40))
out = io.BytesIO()
picture.save(out, format='PNG')
png = analyze_upload(out.getvalue())
assert png.content_type == 'image/png' and png.thumbnail_jpeg[:2] == b'\\xff\\xd8', png.content_type

def ct_slice(syntax):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, 'CT'
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, 'MONOCHROME2'
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    levels = np.full((64, 64), 24, dtype=np.uint16)  # air, -1000 HU
    levels[8:56, 8:56] = 1064  # soft tissue, 40 HU
    levels[20:30, 20:34] = 2024  # bone, 1000 HU
    ds.PixelData = levels.tobytes()
    if syntax == JPEGLosslessSV1:  # no pydicom encoder: the (pruned) imagecodecs' libjpeg-turbo writes it
        ds.PixelData = encapsulate([imagecodecs.jpeg8_encode(levels, lossless=True, predictor=1, bitspersample=16)])
        ds['PixelData'].VR = 'OB'
        ds.file_meta.TransferSyntaxUID = syntax
    elif syntax != ExplicitVRLittleEndian:
        ds.compress(syntax)  # RLE: pylibjpeg-rle, JPEG-LS: pyjpegls, JPEG 2000: pylibjpeg-openjpeg
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()

findings = {}
for syntax in (ExplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1):
    dicom = analyze_upload(ct_slice(syntax))
    assert dicom.content_type == 'application/dicom', (syntax.name, dicom.content_type)
    assert dicom.thumbnail_jpeg[:2] == dicom.preview_jpeg[:2] == b'\\xff\\xd8', syntax.name
    findings[syntax.name] = dicom.results['findings']
uncompressed = findings[ExplicitVRLittleEndian.name]
assert uncompressed and all(found == uncompressed for found in findings.values()), findings  # lossless: same pixels
print('ok', png.content_type, dicom.content_type, len(findings))
"""


# A request each function answers without a database: no token (401), or an admin call without an action.
REQUESTS: dict[str, tuple[str, str] | dict[str, Any] | None] = {
    "upload": ("POST", "/api/v1/scans/analyze"),
    "images": ("GET", "/api/v1/scans/image/scan_smoke/thumbnail"),
    "render": ("GET", "/api/v1/dicomweb/studies/1.2/series/1.3/instances/1.4/rendered"),
    "scans": ("GET", "/api/v1/scans"),
    "auth": ("DELETE", "/api/v1/auth/sessions/current"),
    "admin": {},
    "migrate": None,  # connects to the database at once: import only
    "cleanup": None,  # likewise
    "tiering": None,  # likewise
}


def smoke_event(name: str) -> dict[str, Any] | None:
    request = REQUESTS[name]
    if not isinstance(request, tuple):
        return request
    method, path = request
    route = next(r for r in load_routes(ROOT / "serverless.yml") if r.function_name == name and r.method == method)
    return build_event(
        method=method,
        raw_path=path,
        raw_query="",
        headers=[("host", "smoke.example.test")],
        body=b"",
        source_ip="127.0.0.1",
        route=route,
        path_params={},
    )


def run_in_package(python: str, directory: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    # -B -I: like Lambda, nothing may be written next to the code and no user site is used.
    return subprocess.run(
        [python, "-B", "-I", "-c", code, *args],
        cwd=directory,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=120,
    )


@pytest.mark.parametrize("name", FUNCTIONS)
def test_package_imports_and_answers_under_the_lambda_python(name: str, tmp_path: Path) -> None:
    """Each function from its own zip, not the dev venv: a missing library or file only shows up here."""
    python = lambda_python()
    with zipfile.ZipFile(archive(name)) as zipped:
        zipped.extractall(tmp_path)
    result = run_in_package(python, tmp_path, SMOKE, name, json.dumps(smoke_event(name)))
    assert result.returncode == 0, result.stderr[-3000:]
    *logged, last = result.stdout.splitlines()
    report = json.loads(last)
    assert report["python"] == [3, 12] and report["no_pyc_written"] == 1
    assert not report["stale"], f"bytecode does not match its source: {report['stale']}"
    if name not in IMAGING_FUNCTIONS:
        assert report["heavy"] == [], report["heavy"]
    if name in HTTP_FUNCTIONS:
        assert report["result"]["statusCode"] == 401, report["result"]
        assert json.loads(report["result"]["body"])["error"]["code"] == "not_authenticated"
        # Powertools from the zip: the request's JSON log line, then its metrics in EMF (shared.core.observability).
        line, metrics = (json.loads(text) for text in logged)
        event = smoke_event(name)
        assert (line["message"], line["status_code"], line["function_name"]) == ("request", 401, name), line
        assert event is not None and line["route"] == event["routeKey"] and line["cold_start"] is True, line
        assert metrics["Responses4xx"] == [1.0], metrics
        assert metrics["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "CtScanStore", metrics
    elif name == "admin":
        assert report["result"]["ok"] is False


# The migrate function's backfill step, from its zip: a DICOM file built with the zip's pydicom,
# described as an upload describes it, without numpy (the zip has none to load).
DESCRIBE = """
import io, sys
sys.path.insert(0, '.')
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from shared.dicom import describe_instance
from shared.scans.instances import new_instance
ds = Dataset()
ds.file_meta = FileMetaDataset()
ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), 'CT'
ds.Rows = ds.Columns = 4
ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, 'MONOCHROME2'
ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
ds.PixelData = bytes(range(32))
out = io.BytesIO()
ds.save_as(out, enforce_file_format=True)
data = out.getvalue()
instance = new_instance(describe_instance(data))
(((offset, length),),) = instance.frames
assert data[offset:offset + length] == bytes(range(32)), instance.frames
print('ok', instance.sop_instance_uid == ds.SOPInstanceUID, sorted(m for m in ('numpy', 'PIL') if m in sys.modules))
"""


def test_migrate_package_describes_dicom_under_the_lambda_python(tmp_path: Path) -> None:
    python = lambda_python()
    with zipfile.ZipFile(archive("migrate")) as zipped:
        zipped.extractall(tmp_path)
    result = run_in_package(python, tmp_path, DESCRIBE)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok True []", result.stdout


def test_upload_package_analyzes_png_and_dicom_under_the_lambda_python(tmp_path: Path) -> None:
    python = lambda_python()
    with zipfile.ZipFile(archive("upload")) as zipped:
        zipped.extractall(tmp_path)
    result = run_in_package(python, tmp_path, ANALYZE)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok image/png application/dicom 5"), result.stdout


# ---------------------------------------------------------------- issue 10: the S3 tier, the CDN, the origin lock

BUCKET_ARN = {"Fn::GetAtt": ["ImagesBucket", "Arn"]}
S3_TIER_SETTINGS = {
    "IMAGES_BUCKET": {"Ref": "ImagesBucket"},
    "STORAGE_TIER_S3_MIN_BYTES": "1048576",
    "MAX_DIRECT_UPLOAD_BYTES": "500000000",
}
S3_TIER_FUNCTIONS = {"upload", "images", "render", "tiering", "cleanup", "migrate"}
# What each function may do in the images bucket: action -> the bucket ("") or key patterns.
S3_ACCESS: dict[str, dict[str, set[str]]] = {
    "upload": {
        "s3:PutObject": {"uploads/*", "scans/*"},
        "s3:GetObject": {"uploads/*", "scans/*"},
        "s3:DeleteObject": {"uploads/*"},
        "s3:ListBucket": {""},
    },
    "images": {"s3:GetObject": {"scans/*"}},
    "render": {"s3:GetObject": {"scans/*"}},
    "scans": {},
    "auth": {},
    "migrate": {"s3:GetObject": {"scans/*"}},
    "admin": {},
    "cleanup": {"s3:DeleteObject": {"scans/*", "uploads/*"}, "s3:ListBucket": {""}},
    "tiering": {
        "s3:GetObject": {"scans/*"},
        "s3:PutObject": {"scans/*"},
        "s3:DeleteObject": {"scans/*"},
        "s3:ListBucket": {""},
    },
}


def bucket_resource(resource: Any) -> str:
    """ImagesBucket's ARN as "" and its object patterns as "scans/*"; anything else fails the test."""
    if resource == BUCKET_ARN:
        return ""
    assert isinstance(resource, dict) and resource.get("Fn::Join", [None, []])[1][:1] == [BUCKET_ARN], resource
    separator, (_, suffix) = resource["Fn::Join"]
    assert separator == "" and suffix.startswith("/"), resource
    return str(suffix[1:])


def s3_access(template: dict[str, Any], role: str) -> dict[str, set[str]]:
    granted: dict[str, set[str]] = {}
    for statement in role_statements(template, role):
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        s3_actions = [a for a in actions if a.startswith("s3:")]
        if not s3_actions:
            continue
        assert statement["Effect"] == "Allow" and "Condition" not in statement, statement
        assert s3_actions == actions, statement  # S3 statements name S3 actions only
        for action in s3_actions:
            granted.setdefault(action, set()).update(bucket_resource(r) for r in statement["Resource"])
    return granted


@pytest.mark.parametrize("name", sorted(S3_ACCESS))
def test_each_function_may_do_only_what_it_uses_in_the_images_bucket(template: dict[str, Any], name: str) -> None:
    assert s3_access(template, ROLES[name]) == S3_ACCESS[name]


def test_the_s3_tier_settings_reach_the_functions_that_use_them(template: dict[str, Any]) -> None:
    for name in HTTP_FUNCTIONS | OPS_FUNCTIONS:
        env = template["Resources"][function_logical_id(name)]["Properties"]["Environment"]["Variables"]
        if name in S3_TIER_FUNCTIONS:
            assert {key: env.get(key) for key in S3_TIER_SETTINGS} == S3_TIER_SETTINGS, name
        else:
            assert not set(S3_TIER_SETTINGS) & set(env), name


def test_images_bucket_is_private_encrypted_unversioned_and_expires_what_is_never_finished(
    template: dict[str, Any],
) -> None:
    bucket = template["Resources"]["ImagesBucket"]
    assert bucket["Type"] == "AWS::S3::Bucket"
    assert bucket["DeletionPolicy"] == "Retain"  # patient images outlive the stack
    props = bucket["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"] == [
        {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
    ]
    assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    assert props.get("VersioningConfiguration", {"Status": "Suspended"}) == {"Status": "Suspended"}
    assert "WebsiteConfiguration" not in props and "AccessControl" not in props
    rules = {rule["Id"]: rule for rule in props["LifecycleConfiguration"]["Rules"]}
    assert rules["abort-incomplete-multipart-uploads"] == {
        "Id": "abort-incomplete-multipart-uploads",
        "Status": "Enabled",
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
    }
    assert rules["expire-unfinished-uploads"] == {
        "Id": "expire-unfinished-uploads",
        "Status": "Enabled",
        "Prefix": "uploads/",
        "ExpirationInDays": 2,
    }
    assert len(rules) == 2  # nothing expires stored images (scans/)
    assert template["Outputs"]["ImagesBucketName"]["Value"] == {"Ref": "ImagesBucket"}


def test_images_bucket_allows_tls_only(template: dict[str, Any]) -> None:
    policies = [p["Properties"] for p in resources(template, "AWS::S3::BucketPolicy").values()]
    (policy,) = [p for p in policies if p["Bucket"] == {"Ref": "ImagesBucket"}]
    (statement,) = policy["PolicyDocument"]["Statement"]  # no Allow: IAM roles alone grant access
    assert statement["Effect"] == "Deny" and statement["Principal"] == "*" and statement["Action"] == "s3:*"
    assert statement["Resource"] == [BUCKET_ARN, {"Fn::Join": ["", [BUCKET_ARN, "/*"]]}]
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_images_bucket_cors_allows_the_presigned_post_from_the_web_app_only(template: dict[str, Any]) -> None:
    rules = template["Resources"]["ImagesBucket"]["Properties"]["CorsConfiguration"]["CorsRules"]
    origins = [origin for rule in rules for origin in rule["AllowedOrigins"]]
    assert {"Fn::Join": ["", ["https://", {"Fn::GetAtt": ["WebDistribution", "DomainName"]}]]} in origins
    assert "*" not in origins
    cors_api = template["Resources"]["HttpApi"]["Properties"]["CorsConfiguration"]["AllowOrigins"]
    assert [o for o in origins if isinstance(o, str)] == cors_api  # the stage's other frontends, as the API's CORS
    for rule in rules:
        assert rule["AllowedMethods"] == ["POST"], rule


def test_functions_reach_only_the_images_bucket_through_an_s3_gateway_endpoint(template: dict[str, Any]) -> None:
    endpoints = resources(template, "AWS::EC2::VPCEndpoint")
    (s3,) = [e["Properties"] for e in endpoints.values() if e["Properties"]["VpcEndpointType"] == "Gateway"]
    assert s3["ServiceName"] == {"Fn::Sub": "com.amazonaws.${AWS::Region}.s3"}
    assert s3["RouteTableIds"] == [{"Ref": "PrivateRouteTable"}]
    (statement,) = s3["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Resource"] == [BUCKET_ARN, {"Fn::Join": ["", [BUCKET_ARN, "/*"]]}]
    assert not any(a == "s3:*" or a == "*" for a in statement["Action"])


def test_upload_is_sized_for_a_500_mb_file_and_answers_the_presigned_upload_routes(template: dict[str, Any]) -> None:
    upload = template["Resources"]["UploadLambdaFunction"]["Properties"]
    assert (upload["MemorySize"], upload["Timeout"], upload["EphemeralStorage"]) == (3008, 29, {"Size": 1024})
    integrations = resources(template, "AWS::ApiGatewayV2::Integration")
    targets = {}
    for route in resources(template, "AWS::ApiGatewayV2::Route").values():
        integration_id = route["Properties"]["Target"]["Fn::Join"][1][1]["Ref"]
        targets[route["Properties"]["RouteKey"]] = integrations[integration_id]["Properties"]["IntegrationUri"]
    for key in (
        "POST /api/v1/scans/analyze",
        "POST /api/v1/scans/uploads",
        "POST /api/v1/scans/uploads/{upload_id}/complete",
    ):
        assert targets[key] == {"Fn::GetAtt": ["UploadLambdaFunction", "Arn"]}, key


def test_tiering_is_an_ops_function_with_time_for_a_batch(template: dict[str, Any]) -> None:
    tiering = template["Resources"]["TieringLambdaFunction"]["Properties"]
    assert tiering["Handler"] == "functions/tiering/handler.handler"
    assert (tiering["Timeout"], tiering["MemorySize"]) == (900, 1769)
    target = {"Fn::GetAtt": ["TieringLambdaFunction", "Arn"]}
    assert not [
        p for p in resources(template, "AWS::Lambda::Permission").values() if p["Properties"]["FunctionName"] == target
    ]
    assert not [
        r
        for r in resources(template, "AWS::Events::Rule").values()
        if any(t["Arn"] == target for t in r["Properties"]["Targets"])
    ]


def image_behavior(config: dict[str, Any]) -> dict[str, Any]:
    (behavior,) = [b for b in config["CacheBehaviors"] if b["PathPattern"] == IMAGE_ROUTE]
    return behavior


def test_the_signed_image_route_is_cached_and_matched_before_the_rest_of_the_api(template: dict[str, Any]) -> None:
    config = distribution_config(template)
    patterns = [b["PathPattern"] for b in config["CacheBehaviors"]]
    assert patterns.index(IMAGE_ROUTE) < patterns.index("/api/*")  # CloudFront takes the first match
    images = image_behavior(config)
    (api,) = [b for b in config["CacheBehaviors"] if b["PathPattern"] == "/api/*"]
    assert images["TargetOriginId"] == api["TargetOriginId"] == "http-api"
    assert images["AllowedMethods"] in (["GET", "HEAD"], ["GET", "HEAD", "OPTIONS"])
    assert images["CachedMethods"] == ["GET", "HEAD"]
    assert images["ViewerProtocolPolicy"] == "https-only"
    assert images["Compress"] is False
    assert images["CachePolicyId"] == {"Ref": "ImagesCachePolicy"}
    # Nothing but the cache key reaches the origin: no origin request policy (and none could forward Authorization).
    assert "OriginRequestPolicyId" not in images
    assert not resources(template, "AWS::CloudFront::OriginRequestPolicy")
    assert not any(key in images for key in ("ForwardedValues", "MinTTL", "DefaultTTL", "MaxTTL"))


def test_the_image_cache_key_is_the_path_and_the_signature_and_nothing_else(template: dict[str, Any]) -> None:
    config = template["Resources"]["ImagesCachePolicy"]["Properties"]["CachePolicyConfig"]
    key = config["ParametersInCacheKeyAndForwardedToOrigin"]
    assert key["QueryStringsConfig"]["QueryStringBehavior"] == "whitelist"
    assert sorted(key["QueryStringsConfig"]["QueryStrings"]) == ["exp", "kid", "sig"]
    assert key["HeadersConfig"] == {"HeaderBehavior": "none"}  # not Accept, not Authorization
    assert key["CookiesConfig"] == {"CookieBehavior": "none"}
    assert key["EnableAcceptEncodingGzip"] is False and key["EnableAcceptEncodingBrotli"] is False
    # MinTTL 0: the origin's Cache-Control decides, so `private` (a token's answer) is never cached and
    # a signed answer's s-maxage (the seconds its signature has left) bounds the copy.
    assert config["MinTTL"] == 0
    assert config["DefaultTTL"] >= 3600 and config["MaxTTL"] >= config["DefaultTTL"]


def test_only_requests_through_the_cdn_reach_the_http_functions(template: dict[str, Any]) -> None:
    config = distribution_config(template)
    (api_origin,) = [o for o in config["Origins"] if o["Id"] == "http-api"]
    (header,) = api_origin["OriginCustomHeaders"]
    assert header["HeaderName"] == "X-Origin-Verify"
    # A dynamic reference, resolved by CloudFormation at deploy time: the value is never in the template.
    assert header["HeaderValue"] == {
        "Fn::Join": ["", ["{{resolve:secretsmanager:", ORIGIN_SECRET, ":SecretString:value}}"]]
    }
    (bucket_origin,) = [o for o in config["Origins"] if o["Id"] != "http-api"]
    assert "OriginCustomHeaders" not in bucket_origin
    secret = template["Resources"]["OriginVerifySecret"]
    assert secret["Type"] == "AWS::SecretsManager::Secret" and "SecretString" not in secret["Properties"]
    generated = secret["Properties"]["GenerateSecretString"]
    assert generated["GenerateStringKey"] == "value" and json.loads(generated["SecretStringTemplate"]) == {}
    assert generated["PasswordLength"] >= 32  # shared.auth.origin.MIN_SECRET_LENGTH
    assert generated["ExcludePunctuation"] is True
    for name in HTTP_FUNCTIONS | OPS_FUNCTIONS:
        env = template["Resources"][function_logical_id(name)]["Properties"]["Environment"]["Variables"]
        if name in HTTP_FUNCTIONS:
            assert env["ORIGIN_VERIFY_SECRET_ARN"] == ORIGIN_SECRET, name
        else:
            assert "ORIGIN_VERIFY_SECRET_ARN" not in env, name
