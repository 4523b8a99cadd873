"""serverless.yml as data, for the scripts that read it (the local gateway, the web publisher)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import yaml


class _CloudFormationLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no type hints
    """SafeLoader that reads CloudFormation short forms (!Ref, !GetAtt, !Sub …) as plain values."""


def _cloudformation_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    # What a reference resolves to matters to CloudFormation, not to these scripts.
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node, deep=True)}
    return {suffix: loader.construct_mapping(node, deep=True)}


_CloudFormationLoader.add_multi_constructor("!", _cloudformation_tag)


def read_serverless_yml(serverless_yml: Path) -> dict[str, Any]:
    """The file's contents; CloudFormation short forms (!Ref x) come back as {"Ref": "x"}."""
    config = yaml.load(serverless_yml.read_text(encoding="utf-8"), Loader=_CloudFormationLoader) or {}
    return cast(dict[str, Any], config)
