"""What a viewer of the deployed CloudFront distribution gets in place of a function's Cache-Control: the
value a cache behaviour's response headers policy sets with Override (infra/web.yml), on the paths
that behaviour serves. On the signed image route that is `private` for the function's `s-maxage`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.build.serverless_yml import read_serverless_yml

WEB_YML = Path("infra") / "web.yml"


@dataclass(frozen=True)
class ViewerCacheControl:
    """The Cache-Control CloudFront sends viewers on one cache behaviour's paths (None: the origin's)."""

    path_pattern: str
    value: str | None

    def matches(self, raw_path: str) -> bool:
        """CloudFront's path pattern: case-sensitive, `*` any run of characters, `?` one."""
        return _pattern(self.path_pattern).fullmatch(raw_path) is not None


def _pattern(path_pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in path_pattern))


def _cache_control_of(policy: dict[str, Any]) -> str | None:
    config = (policy.get("Properties") or {}).get("ResponseHeadersPolicyConfig") or {}
    for item in (config.get("CustomHeadersConfig") or {}).get("Items") or []:
        if str(item.get("Header", "")).lower() == "cache-control" and item.get("Override") is True:
            return str(item["Value"])
    return None


def load_viewer_cache_control(root: Path) -> list[ViewerCacheControl]:
    """The distribution's cache behaviours in CloudFront's order (first match wins), each with the
    Cache-Control its response headers policy sets; none without infra/web.yml under root."""
    web_yml = root / WEB_YML
    if not web_yml.is_file():
        return []
    resources: dict[str, Any] = read_serverless_yml(web_yml).get("Resources") or {}
    behaviours: list[ViewerCacheControl] = []
    for resource in resources.values():
        if resource.get("Type") != "AWS::CloudFront::Distribution":
            continue
        config = resource["Properties"]["DistributionConfig"]
        for behaviour in config.get("CacheBehaviors") or []:
            ref = behaviour.get("ResponseHeadersPolicyId")
            policy = resources.get(ref.get("Ref", "")) if isinstance(ref, dict) else None
            value = _cache_control_of(policy) if isinstance(policy, dict) else None
            behaviours.append(ViewerCacheControl(str(behaviour["PathPattern"]), value))
    return behaviours


def viewer_headers(
    behaviours: list[ViewerCacheControl], raw_path: str, headers: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """A response's headers as CloudFront's viewer sees them: the Cache-Control of the first behaviour
    whose pattern matches the path, when its policy sets one, in place of the origin's."""
    behaviour = next((b for b in behaviours if b.matches(raw_path)), None)
    if behaviour is None or behaviour.value is None:
        return headers
    return [*((n, v) for n, v in headers if n.lower() != "cache-control"), ("Cache-Control", behaviour.value)]
