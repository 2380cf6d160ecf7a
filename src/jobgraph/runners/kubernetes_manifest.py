"""What the Kubernetes runner submits for one attempt: its settings, the Job's name and the Job itself, as plain dicts.

Kept apart from the runner (and from any Kubernetes client) so that `jobgraph plan` prints exactly what
`start` would create, and so that the manifests can be checked against Kubernetes' own schema with
nothing else loaded. One attempt is one `batch/v1` Job:

- `backoffLimit: 0`: jobgraph owns retries, each retry is a new Job (a new attempt row);
  `activeDeadlineSeconds` from the job's timeout; `ttlSecondsAfterFinished` from the settings, long
  enough for the runner to read the pod's status and log once it ended;
- labels `jobgraph.io/{pipeline,run,job,attempt,owner}` and `app.kubernetes.io/managed-by: jobgraph` on
  the Job and its pod, each made a valid label value (`label_value`); the exact names, which a label
  cannot always hold, are the `jobgraph.io/...` annotations;
- one container named `main`: the image (mapped by the settings' or the pipeline's images), the job's
  args as `args` (the image's entrypoint stays, as the container runners run it), its env, its pool's
  CPU and memory as requests (memory also as the limit), its volumes from PersistentVolumeClaims;
- a job's `secrets` by reference only (`valueFrom.secretKeyRef`): the value is never in a manifest;
- the return value is the container's termination message: the job writes it to the file named by
  `JOBGRAPH_RETURN_VALUE_FILE` (`/dev/termination-log`, policy `File`, so a log is never taken for it);
  Kubernetes keeps at most 4096 bytes of it.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from jobgraph.errors import RunnerError
from jobgraph.runners.base import JobSpec
from jobgraph.runners.redaction import redactor_for

LABEL = "jobgraph.io"
"""The prefix of jobgraph's labels and annotations."""

CONTAINER = "main"
"""The one container of each pod: the runner reads its state, its log and its termination message."""

TERMINATION_MESSAGE_PATH = "/dev/termination-log"
"""Where the job writes its return value (Kubernetes' default path, named explicitly)."""

TERMINATION_MESSAGE_BYTES = 4096
"""The most of a termination message Kubernetes keeps: a longer return value is cut by the kubelet."""

MAX_NAME = 63
"""A Job's name is also the `job-name` label of its pods: a DNS-1123 label, at most 63 characters."""

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\Z")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?\Z")
_QUALIFIED_NAME = re.compile(r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")
_SECRET_KEY = re.compile(r"[-._A-Za-z0-9]{1,253}\Z")


def _matching(pattern: re.Pattern[str], what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"{value!r} is not a valid {what}")
        return value

    return AfterValidator(check)


DnsLabel = Annotated[str, _matching(_DNS_LABEL, "Kubernetes name (lowercase letters, digits and '-', at most 63)")]
DnsSubdomain = Annotated[str, _matching(_DNS_SUBDOMAIN, "Kubernetes name (lowercase letters, digits, '-' and '.')")]
LabelValue = Annotated[str, _matching(_LABEL_VALUE, "label value (letters, digits, '-', '_', '.', at most 63)")]
QualifiedName = Annotated[str, _matching(_QUALIFIED_NAME, "label key (e.g. kubernetes.io/arch or disktype)")]
SecretKey = Annotated[str, _matching(_SECRET_KEY, "Secret key (letters, digits, '-', '_', '.')")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Toleration(_Section):
    """A pod toleration, with Kubernetes' own field names, so one can be copied from its documentation."""

    key: QualifiedName | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: LabelValue | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    tolerationSeconds: int | None = Field(None, ge=0, description="Only with effect NoExecute")

    @field_validator("tolerationSeconds")
    @classmethod
    def _no_execute_only(cls, seconds: int | None, info: ValidationInfo) -> int | None:
        if seconds is not None and info.data.get("effect") != "NoExecute":
            raise ValueError("tolerationSeconds applies to effect NoExecute only")
        return seconds

    @model_validator(mode="after")
    def _as_the_api_server_checks(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists takes no value")
        if self.operator == "Equal" and not self.key:
            raise ValueError("a toleration without a key needs operator Exists (it then tolerates every taint)")
        return self

    def manifest(self) -> dict[str, Any]:
        """The toleration as the pod spec holds it."""
        return self.model_dump(exclude_none=True)


class SecretRef(_Section):
    """Where one job secret lives in Kubernetes: a key of a Secret (the settings' `secret_name` if unset)."""

    key: SecretKey
    name: DnsSubdomain | None = None


class KubernetesSettings(_Section):
    """The `runners: {kubernetes: {...}}` section of a pipeline file."""

    namespace: DnsLabel = Field("default", description="Namespace of every Job (always set in the manifest).")
    context: str | None = Field(None, min_length=1, description="kubeconfig context; the current one if unset.")
    kubeconfig: str | None = Field(
        None, min_length=1, description="Path of the kubeconfig; else $KUBECONFIG, ~/.kube/config, or the "
        "in-cluster service account.")
    images: dict[Annotated[str, Field(min_length=1)], Annotated[str, Field(min_length=1)]] = Field(
        default_factory=dict, description="Image named in a job -> the image the cluster pulls. Unmapped: the "
        "pipeline's container_images, then the name itself.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="The container's imagePullPolicy; Kubernetes' default (Always for :latest) if unset.")
    image_pull_secrets: list[DnsSubdomain] = Field(
        default_factory=list, description="Secrets (of type dockerconfigjson) for pulling the images.")
    service_account: DnsSubdomain | None = Field(None, description="The pods' service account; the namespace's "
                                                 "default if unset.")
    node_selector: dict[QualifiedName, LabelValue] = Field(
        default_factory=dict, description="Node labels the pods must run on, e.g. {kubernetes.io/arch: amd64}.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Taints the pods tolerate.")
    ttl_seconds_after_finished: int = Field(
        3600, ge=60, le=30 * 86400, description="Seconds a finished Job (and its pod, log and exit code) is "
        "kept before Kubernetes deletes it: long enough for jobgraph to read them, even after a restart.")
    pending_limit_secs: float = Field(
        300.0, gt=0, le=86400, description="Seconds a pod may wait (image pull failing, unschedulable) before "
        "the attempt is recorded as ERROR with Kubernetes' reason.")
    log_tail_bytes: int = Field(
        1 << 20, ge=1024, le=100 << 20, description="The end of a pod's log read once it ended (never followed).")
    secret_name: DnsSubdomain = Field(
        "jobgraph", description="The Kubernetes Secret that holds the jobs' secrets: a job's `secrets: [DB_PW]` "
        "becomes env DB_PW from key DB_PW of this Secret. The value is never read by jobgraph.")
    secret_refs: dict[str, SecretRef] = Field(
        default_factory=dict, description="A job secret -> {key, name}: another key (or Secret) than its own name.")
    volume_claims: dict[Annotated[str, Field(min_length=1)], DnsSubdomain] = Field(
        default_factory=dict, description="A job volume's host path -> the PersistentVolumeClaim mounted in its "
        "place (a host path means nothing on a cluster node; a volume with no claim is refused).")
    cpu_limits: bool = Field(False, description="Also cap CPU (limits.cpu = the pool's cpu); off by default, "
                                                "as CPU limits throttle a job that could use an idle core.")
    on_orchestrator_loss: Literal["adopt", "cancel"] = Field(
        "adopt", description="When jobgraph starts again after it died with Jobs in the cluster: `adopt` waits "
        "for them and records their real end; `cancel` deletes them.")


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def _slug(text: str, length: int) -> str:
    """Lowercase letters, digits and single dashes, cut to `length`, never starting or ending with a dash."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower())[:length].strip("-")


def label_value(text: str) -> str:
    """`text` as a valid label value: itself if it is one, else a readable part of it and a digest of all of it.

    Deterministic, so a selector on it (the owner's, the run's) finds what the same text labelled.
    """
    if _LABEL_VALUE.match(text) and len(text) <= MAX_NAME:
        return text
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[: MAX_NAME - 11].strip("-_.")
    return f"{readable}-{_digest(text, 10)}" if readable else _digest(text, 10)


def job_name(spec: JobSpec) -> str:
    """The attempt's Job name: `jg-<run>-<job>-a<attempt>-<digest>`, a DNS-1123 label of at most 63 characters.

    Stable (the same attempt always gets the same name, so a restarted jobgraph finds it) and unique per
    run, job and attempt: the digest covers the exact run id, job name and attempt, so names that differ
    only in case, in characters a label cannot hold or past what fits still get distinct Job names.
    """
    digest = _digest(f"{spec.run_id}\x00{spec.task}\x00{spec.attempt}", 10)
    run = _slug(spec.run_id, 8) or "run"
    tail = f"a{spec.attempt}-{digest}"
    room = MAX_NAME - len(f"jg-{run}--{tail}")
    job = _slug(spec.task, room) if room > 0 else ""
    return "-".join(part for part in ("jg", run, job, tail) if part)[:MAX_NAME].rstrip("-")


def labels(spec: JobSpec, owner: str) -> dict[str, str]:
    """The labels of an attempt's Job and pod: how the runner lists a run's or an owner's Jobs."""
    return {
        "app.kubernetes.io/managed-by": "jobgraph",
        f"{LABEL}/pipeline": label_value(spec.pipeline),
        f"{LABEL}/run": label_value(spec.run_id),
        f"{LABEL}/job": label_value(spec.task),
        f"{LABEL}/attempt": str(spec.attempt),
        f"{LABEL}/owner": label_value(owner),
    }


def annotations_of(spec: JobSpec, owner: str) -> dict[str, str]:
    """The exact pipeline, run, job and owner, which a label value cannot always hold."""
    return {f"{LABEL}/pipeline": spec.pipeline, f"{LABEL}/run": spec.run_id, f"{LABEL}/job": spec.task,
            f"{LABEL}/owner": owner}


def quantity_cpu(cpu: float) -> str:
    """CPUs as a Kubernetes quantity in millicores (`0.5` -> `500m`), at least 1m."""
    return f"{max(1, round(cpu * 1000))}m"


def quantity_memory(size: int) -> str:
    """Bytes as a Kubernetes quantity: `Gi` or `Mi` when exact, else plain bytes."""
    for unit, shift in (("Gi", 30), ("Mi", 20), ("Ki", 10)):
        if size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


def secret_ref(name: str, settings: KubernetesSettings) -> dict[str, str]:
    """Where a job secret is read from: `secret_refs`, else the key of its own name in `secret_name`."""
    ref = settings.secret_refs.get(name)
    problem = _secret_problem(name, settings)
    if problem:
        raise RunnerError(problem)
    return {"name": (ref.name if ref and ref.name else settings.secret_name), "key": ref.key if ref else name}


def _secret_problem(name: str, settings: KubernetesSettings) -> str | None:
    if name in settings.secret_refs or _SECRET_KEY.match(name):
        return None
    return (f"secret {name}: {name!r} cannot be a Kubernetes Secret key (letters, digits, '-', '_', '.'); "
            f"map it in runners.kubernetes.secret_refs, e.g. {name}: {{key: db-password}}")


def _volume_problem(host: str, settings: KubernetesSettings) -> str | None:
    if host in settings.volume_claims:
        return None
    return (f"volume {host!r} has no PersistentVolumeClaim: a host path means nothing on a cluster node; map "
            f"it in runners.kubernetes.volume_claims, e.g. {{{host!r}: my-claim}}")


def job_problems(volumes: Mapping[str, str], secrets: Iterable[str],
                 settings: KubernetesSettings) -> list[tuple[str, str]]:
    """(field, message) for what of a job these settings cannot turn into a Job, for `jobgraph validate`:
    a volume with no claim, a secret whose name cannot be a Secret key."""
    found = [("volumes", _volume_problem(host, settings)) for host in volumes]
    found += [("secrets", _secret_problem(name, settings)) for name in secrets]
    return [(field, message) for field, message in found if message]


def _env(spec: JobSpec, settings: KubernetesSettings) -> list[dict[str, Any]]:
    """The container's env: values, then each of the job's secrets by reference; no secret value anywhere."""
    redactor = redactor_for(spec.secret_values)
    env: list[dict[str, Any]] = []
    for name, value in spec.env.items():
        if name in spec.secret_names:
            continue
        shown = TERMINATION_MESSAGE_PATH if name == "JOBGRAPH_RETURN_VALUE_FILE" else redactor.text(value)
        env.append({"name": name, "value": shown})
    env.extend({"name": name, "valueFrom": {"secretKeyRef": secret_ref(name, settings)}}
               for name in sorted(spec.secret_names))
    return env


def _resources(spec: JobSpec, settings: KubernetesSettings) -> dict[str, dict[str, str]]:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if spec.cpu:
        requests["cpu"] = quantity_cpu(spec.cpu)
        if settings.cpu_limits:
            limits["cpu"] = requests["cpu"]
    if spec.memory_bytes:
        requests["memory"] = limits["memory"] = quantity_memory(spec.memory_bytes)
    return {key: value for key, value in (("requests", requests), ("limits", limits)) if value}


def _volumes(spec: JobSpec, settings: KubernetesSettings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, container mounts): each job volume from the claim its host path is mapped to."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for index, (host, target) in enumerate(spec.volumes.items()):
        problem = _volume_problem(host, settings)
        if problem:
            raise RunnerError(f"job {spec.task}: {problem}")
        claim = settings.volume_claims[host]
        path, _, mode = target.partition(":")
        volumes.append({"name": f"volume-{index}", "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": f"volume-{index}", "mountPath": path, **({"readOnly": True} if mode == "ro" else {})})
    return volumes, mounts


def image_of(spec: JobSpec, settings: KubernetesSettings) -> str:
    """The image the cluster pulls for the job (the settings' `images`, which the runner fills from the
    pipeline's container_images for names it does not map)."""
    return settings.images.get(spec.image, spec.image)


def pod_spec(spec: JobSpec, settings: KubernetesSettings) -> dict[str, Any]:
    """The pod's spec: one container `main`, never restarted in place (a retry is a new Job)."""
    volumes, mounts = _volumes(spec, settings)
    redactor = redactor_for(spec.secret_values)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image_of(spec, settings),
        **({"args": [redactor.text(arg) for arg in spec.args]} if spec.args else {}),
        "env": _env(spec, settings),
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "File",
    }
    if settings.image_pull_policy:
        container["imagePullPolicy"] = settings.image_pull_policy
    resources = _resources(spec, settings)
    if resources:
        container["resources"] = resources
    if spec.workdir:
        container["workingDir"] = spec.workdir
    if mounts:
        container["volumeMounts"] = mounts
    pod: dict[str, Any] = {"restartPolicy": "Never", "enableServiceLinks": False, "containers": [container]}
    if spec.network == "host":
        pod["hostNetwork"] = True
    if volumes:
        pod["volumes"] = volumes
    if settings.service_account:
        pod["serviceAccountName"] = settings.service_account
    if settings.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in settings.image_pull_secrets]
    if settings.node_selector:
        pod["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        pod["tolerations"] = [toleration.manifest() for toleration in settings.tolerations]
    return pod


def job_manifest(spec: JobSpec, settings: KubernetesSettings, owner: str) -> dict[str, Any]:
    """The `batch/v1` Job for one attempt, as the runner creates it; a RunnerError if it cannot be made."""
    job_spec: dict[str, Any] = {"backoffLimit": 0, "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished}
    if spec.timeout:
        job_spec["activeDeadlineSeconds"] = max(1, math.ceil(spec.timeout))
    job_spec["template"] = {"metadata": _metadata(spec, owner), "spec": pod_spec(spec, settings)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(spec), "namespace": settings.namespace, **_metadata(spec, owner)},
        "spec": job_spec,
    }


def _metadata(spec: JobSpec, owner: str) -> dict[str, dict[str, str]]:
    """Labels and annotations, new dicts each time: the Job's and its pod's are never one object."""
    return {"labels": labels(spec, owner), "annotations": annotations_of(spec, owner)}


def pod_manifest(spec: JobSpec, settings: KubernetesSettings, owner: str) -> dict[str, Any]:
    """The Job's pod template as a `v1` Pod named like the Job: what `podman kube play` can run, which
    has no Job kind. The Job's deadline is kept as the pod's own `activeDeadlineSeconds`."""
    job = job_manifest(spec, settings, owner)
    pod = dict(job["spec"]["template"]["spec"])
    if "activeDeadlineSeconds" in job["spec"]:
        pod["activeDeadlineSeconds"] = job["spec"]["activeDeadlineSeconds"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {**job["metadata"]}, "spec": pod}


def describe(spec: JobSpec, settings: KubernetesSettings, owner: str) -> dict[str, object]:
    """What `start` creates for this attempt, for `jobgraph plan`: the Job, secrets as references."""
    return {"runner": "kubernetes", "manifest": job_manifest(spec, settings, owner)}


def with_pipeline_images(settings: KubernetesSettings, container_images: Mapping[str, str]) -> KubernetesSettings:
    """The settings with the pipeline's `container_images` under their own `images` (theirs win)."""
    if not container_images:
        return settings
    return settings.model_copy(update={"images": {**container_images, **settings.images}})
