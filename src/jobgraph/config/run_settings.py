"""What a pipeline says about its runs as a whole rather than about one job: the parameters a run takes
(`params:`) and whom a run's end is told (`notify:`).

Split from config/model.py, which keeps the jobs, pools and defaults and the Pipeline that holds them all.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from jobgraph.config.fields import Command, Duration, FrozenModel, Name
from jobgraph.config.params import ParamType, coerce


class Param(FrozenModel):
    """A run parameter: `{{ params.NAME }}` in a job's args and env; `--param NAME=VALUE` sets it for a run."""

    name: Name
    type: ParamType = Field(default="string", description="string, integer, number, boolean, date (2024-01-31) "
                            "or list")
    default: Any = Field(default=None, description="The value when a run does not give one; none: every run "
                         "must give it")
    description: str | None = None

    @model_validator(mode="after")
    def _default_of_its_type(self) -> Param:
        if self.default is not None:
            try:
                object.__setattr__(self, "default", coerce(self.type, self.default))
            except ValueError as exc:
                raise ValueError(f"the default of parameter '{self.name}' is not of type {self.type}: {exc}") from None
        return self


def _check_webhook(url: str) -> str:
    """A webhook is an absolute http(s) URL with a host; nothing else is ever fetched."""
    from urllib.parse import urlsplit  # only a pipeline with a webhook needs it

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        raise ValueError("is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if any(c in url for c in "\r\n\x00 "):
        raise ValueError("may not contain spaces, line breaks or NUL")
    return url


NotifyEvent = Literal["run_failed", "run_succeeded", "job_failed"]

MAX_NOTIFY_SECS = 600.0


class Notify(FrozenModel):
    """Whom to tell when a run fails or succeeds, or a job fails: a webhook (JSON or Slack) or a command hook."""

    on: tuple[NotifyEvent, ...] = Field(default=("run_failed",), min_length=1,
                                        description="run_failed, run_succeeded, job_failed [default: run_failed]")
    webhook: Annotated[str, AfterValidator(_check_webhook)] | None = Field(
        default=None, description="An http(s) URL to POST to (a URL holding a token belongs in webhook_secret)")
    webhook_secret: Name | None = Field(
        default=None, description="The environment variable of jobgraph's that holds the URL: never stored or shown")
    format: Literal["json", "slack"] = Field(default="json", description="json, or slack: a {\"text\": ...} body")
    command: Command | None = Field(default=None, description="A hook: argv run with the JSON body on its stdin")
    timeout: Duration = Field(default=10.0, gt=0, le=MAX_NOTIFY_SECS,
                              description="Seconds one notification may take, every try included; a run waits at "
                              "most this long at its end for the ones still being sent")
    retries: int = Field(default=3, strict=True, ge=0, le=10, description="Tries after the first, with backoff")

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, value: Any) -> Any:
        """YAML 1.1 reads an unquoted `on:` key as the boolean true (as GitHub Actions files know): take it back."""
        if isinstance(value, dict) and True in value and "on" not in value:
            value = {("on" if key is True else key): item for key, item in value.items()}
        return value

    @model_validator(mode="after")
    def _one_target(self) -> Notify:
        given = [name for name in ("webhook", "webhook_secret", "command") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of webhook, webhook_secret or command" + (
                f" (got {', '.join(given)})" if given else ""))
        if self.command is not None and self.format != "json":
            raise ValueError("format is for webhooks: a command gets the JSON body on its stdin")
        return self
