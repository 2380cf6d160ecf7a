"""What the SPCS emulator makes of a job service's specification: the one container Podman runs.

SPCS reads a YAML document (`spec: {containers: [...]}`); the emulator takes exactly the part a job
of jobgraph's SPCS runner uses (one container: image, command, args, env, secrets by reference,
resources; `logExporters` and `platformMonitor` only say where Snowflake sends telemetry) and refuses
the rest by name, so nothing in a spec is silently ignored. The image goes through the pipeline's
`container_images` (a Snowflake repository path means nothing to Podman); a Snowflake secret's value
comes from jobgraph's own environment under the variable the spec names, as every other runner's
secrets do.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

CONTAINER_FIELDS = frozenset({"name", "image", "command", "args", "env", "resources", "secrets"})
"""The container fields the emulator runs."""

SPEC_FIELDS = frozenset({"containers", "logExporters", "platformMonitor"})
"""The `spec` fields it reads (the last two only say where Snowflake sends telemetry: nothing to run)."""

_QUANTITY = re.compile(r"(\d+(?:\.\d+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?")
_SCALE = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}


class SpecError(ValueError):
    """The specification holds something the emulator does not run; the message names the field."""


@dataclass(frozen=True)
class ContainerPlan:
    """The container a job service becomes: what Podman's create call needs."""

    container_name: str
    spec_image: str
    image: str
    entrypoint: list[str] | None
    command: list[str] | None
    environment: dict[str, str] = field(default_factory=dict)
    cpu: float | None = None
    memory_bytes: int | None = None


def parse_spec(text: str, images: Mapping[str, str]) -> ContainerPlan:
    """The container of a job service's specification, or SpecError naming what is wrong or not emulated."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"the specification is not YAML: {exc}") from None
    if not isinstance(document, dict) or set(document) != {"spec"} or not isinstance(document["spec"], dict):
        raise SpecError("the specification must be one mapping with a single key 'spec'")
    spec: dict[str, Any] = document["spec"]
    _only(spec, SPEC_FIELDS, "spec")
    containers = spec.get("containers")
    if not isinstance(containers, list) or len(containers) != 1 or not isinstance(containers[0], dict):
        raise SpecError("spec.containers: the emulator runs job services of exactly one container")
    container: dict[str, Any] = containers[0]
    _only(container, CONTAINER_FIELDS, "spec.containers[0]")
    name = container.get("name")
    image = container.get("image")
    if not isinstance(name, str) or not name:
        raise SpecError("spec.containers[0].name: a container needs a name")
    if not isinstance(image, str) or not image:
        raise SpecError("spec.containers[0].image: a container needs an image")
    environment = {str(key): _scalar(value, f"spec.containers[0].env.{key}")
                   for key, value in _mapping(container.get("env"), "spec.containers[0].env").items()}
    environment.update(_secrets(container.get("secrets")))
    cpu, memory = _resources(_mapping(container.get("resources"), "spec.containers[0].resources"))
    return ContainerPlan(container_name=name, spec_image=image, image=images.get(image, image),
                         entrypoint=_strings(container.get("command"), "spec.containers[0].command"),
                         command=_strings(container.get("args"), "spec.containers[0].args"),
                         environment=environment, cpu=cpu, memory_bytes=memory)


def _only(mapping: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(str(key) for key in mapping if key not in allowed)
    if unknown:
        raise SpecError(f"{where}.{unknown[0]}: not emulated (the emulator runs {', '.join(sorted(allowed))})")


def _mapping(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{where}: must be a mapping")
    return {str(key): item for key, item in value.items()}


def _scalar(value: object, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise SpecError(f"{where}: must be a string or a number")


def _strings(value: object, where: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise SpecError(f"{where}: must be a list")
    return [_scalar(item, f"{where}[{index}]") for index, item in enumerate(value)]


def _secrets(value: object) -> dict[str, str]:
    """Each `snowflakeSecret` reference with an `envVarName`: its value from jobgraph's environment."""
    if value is None:
        return {}
    if not isinstance(value, list):
        raise SpecError("spec.containers[0].secrets: must be a list")
    found: dict[str, str] = {}
    for index, secret in enumerate(value):
        where = f"spec.containers[0].secrets[{index}]"
        if not isinstance(secret, dict):
            raise SpecError(f"{where}: must be a mapping")
        _only(secret, frozenset({"snowflakeSecret", "envVarName", "secretKeyRef"}), where)
        reference = secret.get("snowflakeSecret")
        if isinstance(reference, dict):
            reference = reference.get("objectName")
        variable = secret.get("envVarName")
        if not isinstance(reference, str) or not isinstance(variable, str) or not variable:
            raise SpecError(f"{where}: the emulator takes a snowflakeSecret object name with an envVarName")
        if variable not in os.environ:
            raise SpecError(f"{where}: the emulator has no Snowflake secret {reference}: it reads its value "
                            f"from jobgraph's environment variable {variable}, which is not set")
        found[variable] = os.environ[variable]
    return found


def _resources(resources: dict[str, Any]) -> tuple[float | None, int | None]:
    """(cpus, memory bytes) the container may use: its limits, else its requests."""
    _only(resources, frozenset({"requests", "limits"}), "spec.containers[0].resources")
    cpu: float | None = None
    memory: int | None = None
    for part in ("requests", "limits"):
        values = _mapping(resources.get(part), f"spec.containers[0].resources.{part}")
        _only(values, frozenset({"cpu", "memory"}), f"spec.containers[0].resources.{part}")
        if "cpu" in values:
            cpu = _quantity(values["cpu"], f"spec.containers[0].resources.{part}.cpu")
        if "memory" in values:
            memory = int(_quantity(values["memory"], f"spec.containers[0].resources.{part}.memory"))
    return cpu, memory


def _quantity(value: object, where: str) -> float:
    """`0.5`, `500m`, `6Gi`, `512M`: the number as SPCS (and Kubernetes) read it."""
    match = _QUANTITY.fullmatch(_scalar(value, where).strip())
    if match is None:
        raise SpecError(f"{where}: {value!r} is not a quantity such as 0.5, 500m or 6Gi")
    number = float(match[1])
    if match[2] == "m":
        return number / 1000
    return number * _SCALE[match[2]]
