"""What matters in the CloudFormation template `make package` generates (osls package --stage ci)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest

from scripts.localgw import load_routes
from scripts.package_report import LAMBDA_UNZIPPED_LIMIT, unzipped_size
from tests.conftest import ROOT

BUILD = ROOT / ".serverless"
TEMPLATE = BUILD / "cloudformation-template-update-stack.json"
ARCHIVE = BUILD / "ctscan-store.zip"
HTTP_FUNCTIONS = {"upload", "images", "scans", "auth"}
OPS_FUNCTIONS = {"migrate", "admin"}
SECRET_ARN = {"Fn::GetAtt": ["Database", "MasterUserSecret.SecretArn"]}

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


def test_lambda_role_may_read_only_the_database_secret(template: dict[str, Any]) -> None:
    role = template["Resources"]["IamRoleLambdaExecution"]["Properties"]
    statements = [s for policy in role["Policies"] for s in policy["PolicyDocument"]["Statement"]]
    secret_statements = [s for s in statements if any(a.startswith("secretsmanager:") for a in s["Action"])]
    assert secret_statements == [
        {"Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"], "Resource": [SECRET_ARN]}
    ]
    for statement in statements:
        assert statement["Resource"] != "*" and "*" not in statement["Resource"], statement
        assert not any(action.endswith(":*") or action == "*" for action in statement["Action"]), statement


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


def test_package_is_under_lambdas_unzipped_limit_and_holds_the_code() -> None:
    size = unzipped_size(ARCHIVE)
    assert size < LAMBDA_UNZIPPED_LIMIT, f"{size / 1e6:.1f} MB"
    with zipfile.ZipFile(ARCHIVE) as zipped:
        names = set(zipped.namelist())
    for required in (
        "functions/images/handler.py",
        "shared/db.py",
        "migrations/001_create_scans.sql",
        "pg8000/native.py",
        "mangum/adapter.py",
        "PIL/Image.py",
        "cc3d/__init__.py",
    ):
        assert any(n == required or n.startswith(required) for n in names), required
    # Development tools never deploy.
    for forbidden in ("tests/", "scripts/", "pgserver/", "pytest/", "moto/", ".venv/", "node_modules/"):
        assert not any(n.startswith(forbidden) for n in names), forbidden


def test_package_paths_exist() -> None:
    assert Path(TEMPLATE).is_file() and Path(ARCHIVE).is_file()


SMOKE = """
import io, sys, time
sys.path.insert(0, '.')
started = time.perf_counter()
import functions.images.handler, functions.scans.handler, functions.auth.handler
import functions.upload.handler, functions.migrate.handler, functions.admin.handler
assert 'PIL' not in sys.modules or 'functions.upload.handler' in sys.modules
from PIL import Image
from shared.imaging import analyze_scan
picture = Image.new('L', (64, 64), 20)
picture.paste(200, (10, 10, 30, 40))
out = io.BytesIO()
picture.save(out, format='PNG')
result = analyze_scan(out.getvalue())
assert result.content_type == 'image/png' and result.thumbnail_jpeg[:2] == b'\\xff\\xd8', result
print('ok', sys.version_info[:2], sys.flags.dont_write_bytecode)
"""


def test_package_imports_and_analyzes_under_the_lambda_python(tmp_path: Path) -> None:
    """The artifact itself, not the dev venv: stripped or missing files only show up here."""
    import subprocess

    python = subprocess.run(
        [str(ROOT / "scripts" / "find-lambda-python.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()
    if not python:
        if os.environ.get("CI"):
            raise AssertionError("no CPython 3.12 on the CI machine to import the package with")
        pytest.skip("no CPython 3.12 here to import the Lambda package with")
    with zipfile.ZipFile(ARCHIVE) as zipped:
        zipped.extractall(tmp_path)
    # -B -I: like Lambda, nothing may be written next to the code and no user site is used.
    result = subprocess.run(
        [python, "-B", "-I", "-c", SMOKE],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok (3, 12)")
    compiled = [p for p in tmp_path.rglob("*.cpython-312.pyc") if p.parts[len(tmp_path.parts)] in ("shared", "fastapi")]
    assert compiled, "the package carries no CPython 3.12 bytecode: every cold start would compile from source"
