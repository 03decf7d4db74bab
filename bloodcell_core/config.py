"""One typed settings object, read from BLOODCELL_* environment variables; each setting is declared once, with its
default and what it does, and the README's configuration table is generated from the declarations."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Callable
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasGenerator, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "BLOODCELL_"
# The web console's roles, lowest first: the values of service.states.Role (the top level imports no room).
ROLES = ("technologist", "supervisor", "admin")
MIN_TIME_LIMIT_S = 10  # a task time limit below this would kill ordinary work
WEBHOOK_TIMEOUT_S = 10.0  # one webhook POST waits this long for the receiver
MIN_ORPHAN_AGE_S = 3600  # the youngest unreferenced image file the sweep may remove
# The README's configuration table sits between these lines (scripts/configuration-table rewrites it).
TABLE_START = "<!-- generated from bloodcell_core/config.py by scripts/configuration-table: do not edit by hand -->"
TABLE_END = "<!-- end of the generated configuration table -->"


def env_name(setting: str) -> str:
    """The environment variable of a setting: ``api_port`` is read from BLOODCELL_API_PORT."""
    return ENV_PREFIX + setting.upper()


def soft_time_limit(hard_s: int) -> int:
    """A task's soft time limit (SoftTimeLimitExceeded: it may still clean up), a tenth before its hard kill."""
    return hard_s - max(hard_s // 10, 1)


def masked_url(url: str) -> str:
    """URL with its password replaced by ***: the only form of a database or broker URL that is printed or logged."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}"))


def setting(
    default: Any = None,
    description: str = "",
    *,
    default_factory: Callable[..., Any] | None = None,
    shown: str | None = None,
    note: str | None = None,
) -> Any:
    """A setting's declaration: its default (or ``default_factory``, given the settings declared before it), what it
    does, and for the configuration table ``shown`` (the default column as written, for a derived default) or
    ``note`` (said after the default)."""
    extra: dict[str, Any] = {key: value for key, value in (("shown", shown), ("note", note)) if value is not None}
    if default_factory is not None:
        return Field(default_factory=default_factory, description=description, json_schema_extra=extra or None)
    return Field(default, description=description, json_schema_extra=extra or None)


CommaList = Annotated[tuple[str, ...], NoDecode]  # read as "a,b,c", not as JSON


class Settings(BaseSettings):
    """Every setting with its embedded default; ``Settings.from_env()`` applies the environment."""

    # exactly BLOODCELL_API_PORT for api_port (case-sensitive, as the shell is); keyword arguments use the field names
    model_config = SettingsConfigDict(
        alias_generator=AliasGenerator(validation_alias=env_name),
        case_sensitive=True,
        validate_by_name=True,
        frozen=True,
        extra="forbid",
    )

    home: Path = setting(
        default_factory=lambda: Path.home() / ".bloodcell",
        description="state of the local stack: SQLite file, image store, Redis data, pid and log files",
        shown="`~/.bloodcell`",
    )
    redis_port: int = setting(6379, "port of the redis-server `bloodcell up` starts (when none answers there)")
    broker_url: str = setting(
        default_factory=lambda s: f"redis://127.0.0.1:{s['redis_port']}/0",
        description="Celery broker",
        shown="`redis://127.0.0.1:$BLOODCELL_REDIS_PORT/0`",
    )
    result_backend: str = setting(
        default_factory=lambda s: f"redis://127.0.0.1:{s['redis_port']}/1",
        description="Celery results (single-image tasks)",
        shown="`redis://127.0.0.1:$BLOODCELL_REDIS_PORT/1`",
    )
    database_url: str = setting(
        default_factory=lambda s: f"sqlite:///{s['home'] / 'bloodcell.db'}",
        description="SQLAlchemy URL; `postgresql+psycopg://...` for PostgreSQL",
        shown="`sqlite:///$BLOODCELL_HOME/bloodcell.db`",
    )
    image_store: str = setting(
        "file", "`file` ($BLOODCELL_HOME/images) or `database` (bytes in the SQL database, for several machines)"
    )
    models_dir: Path = setting(
        default_factory=lambda s: s["home"] / "models",
        description="where retraining writes model versions; shared by every worker",
        shown="`$BLOODCELL_HOME/models`",
    )
    default_model: Path = setting(
        PROJECT_ROOT / "models" / "default", "registered as production on an empty database", shown="`models/default` of this checkout"
    )
    worker_device: str = setting(
        "cpu", "`gpu`: the worker also takes the `classify.gpu` queue (not with `BLOODCELL_RUNTIME=openvino`, CPU only)"
    )
    classify_queue: str = setting("classify", "queue producers send classification to (`classify.gpu` for GPU workers)")
    review_threshold: float | None = setting(
        None,
        "cells under this confidence are listed for review; `model`: the threshold calibrated with the production model "
        "(0.80 for a model without calibration), or a number",
        shown="`model`",
    )
    blast_class: str = setting("myeloblast", "the class counted as blasts")
    blast_count: int = setting(5, "blast flag when a sample has at least this many blasts ...")
    blast_percent: float = setting(20.0, "... or at least this percent (the WHO AML threshold is 20 % blasts)")
    non_leukocyte_classes: CommaList = setting(
        ("erythroblast", "platelet"),
        "classes counted but not among the 100 leukocytes of the differential (their percent is per 100 leukocytes, "
        "as LOINC's nucleated erythrocytes/100 leukocytes)",
    )
    immature_classes: CommaList = setting(("ig", "myeloblast"), "classes the immature-cell flag counts")
    immature_percent: float = setting(5.0, "immature-cell flag when those classes together exceed this percent of classified cells")
    unfamiliar_share: float = setting(
        0.1,
        "unfamiliar-image warning (flag `unfamiliar_images`) when more than this share of a sample's cells is unlike the "
        "training images (over the model's out-of-distribution threshold) and not reviewed yet",
    )
    flower_port: int = setting(5555, "Flower's port for `bloodcell up`; Redis, the API and Flower need three different ports")
    flower_basic_auth: str = setting(
        "",
        "`user:password` (several separated by commas) for Flower's login; compose requires it",
        note="`bloodcell up` makes a one-off password for user `ops`, printed once",
    )
    api_host: str = setting("127.0.0.1", "address the HTTP API listens on (`0.0.0.0` in compose)")
    api_port: int = setting(8000, "port of the HTTP API")
    max_image_bytes: int = setting(
        10 * 2**20, "larger image files are refused with 413; at most `BLOODCELL_MAX_REQUEST_BYTES`", note="10 MiB"
    )
    max_images_per_sample: int = setting(1000, "more images (a whole field counts as one, then its cells) in one sample: 413")
    max_image_pixels: int = setting(
        4096 * 4096,
        "width x height from the image header; larger: 413 naming this limit (decompression bombs too)",
        note="4096 x 4096",
    )
    max_cells_per_field: int = setting(
        50, "a whole field with more white cells fails (nothing of it is kept; the sample's other fields go on)"
    )
    field_locator: str = setting("stain_nucleus", "the cell-locator plugin workers find the white cells of submitted fields with")
    max_request_bytes: int = setting(256 * 2**20, "larger request bodies: 413 before reading them", note="256 MiB")
    session_hours: float = setting(8.0, "a console login lasts this long")
    login_attempts: int = setting(5, "failed console logins (per user name, and per address) before logins wait ...")
    login_lockout_minutes: float = setting(15.0, "... for the rest of this window")
    signoff_blast_role: str = setting(
        "supervisor",
        "the least role that signs off a sample with a blast flag, in the console, the API and the CLI alike "
        "(`technologist`, `supervisor`, `admin`; [sign-off](docs/sign-off.md))",
    )
    signoff_min_leukocytes: int = setting(
        100,
        "a sign-off of a sample with fewer classified leukocytes, or with failed images, needs an explicit confirmation, "
        "recorded with it (`confirm_incomplete`, `--confirm-incomplete`, the console's checkbox)",
    )
    trusted_proxies: CommaList = setting(
        (),
        "addresses (comma-separated) of reverse proxies whose `X-Forwarded-For` and `X-Forwarded-Proto` the API believes "
        "(uvicorn's `--forwarded-allow-ips`, set by `bloodcell api` and `bloodcell up`); with none, the client address is "
        "the connection's own, so no local process can dodge the per-address login throttle",
        note="none",
    )
    webhook_attempts: int = setting(
        8,
        "webhook attempts (backoff 5 s, doubling, at most 1 h and at most half of `BLOODCELL_VISIBILITY_TIMEOUT`, so Redis "
        "never hands a waiting retry out twice) before a delivery is marked failed; at least 1",
    )
    sweep_interval_s: float = setting(
        60.0,
        "Celery beat (`bloodcell beat`, started by `up` and compose) sends the sweep this often; at most "
        "`BLOODCELL_SWEEP_WEBHOOK_AGE_S` ([operations](docs/operations.md#the-sweep))",
    )
    sweep_webhook_age_s: float = setting(
        60.0,
        "the sweep re-queues a webhook delivery still pending this many seconds after its attempt was due (its message "
        "was lost, e.g. Redis was down); more than 10 (an attempt's timeout)",
    )
    sweep_orphan_age_s: float = setting(
        24 * 3600.0,
        "the sweep removes files of the file image store that no database row references once they are this old; at least 3600",
        note="1 day",
    )
    retention_days: float = setting(
        0.0,
        "`bloodcell retention` purges the classified samples submitted more than this many days ago, with the images "
        "and rows only they use; the audit log stays ([operations](docs/operations.md#retention))",
        note="keep everything",
    )
    accession_system: str = setting("urn:bloodcell:accession", "the LIMS's namespace for accession ids in FHIR identifiers")
    evaluation_set: str = setting("default", "the registered evaluation set the promotion gate compares on")
    promotion_margin: float = setting(0.001, "a candidate must beat production by this on accuracy and macro-F1")
    promotion_verified: bool = setting(
        False,
        "`1`: the promotion gate also refuses a candidate whose cell agreement or blast-flag sensitivity on the "
        "laboratory's signed-off samples is below production's, or that has no predictions on them "
        "([docs/verification.md](docs/verification.md))",
    )
    shadow: bool = setting(False, "`1`: workers also classify live samples with the newest candidate (stored, never reported)")
    visibility_timeout: int = setting(
        2 * 3600,
        "seconds before Redis gives the unacknowledged task of a vanished worker (SIGKILL, machine lost) to another "
        "worker; must be above both task time limits below, or the service refuses to start",
    )
    classify_time_limit_s: int = setting(
        660,
        "hard time limit of classification, webhook and sweep tasks (the soft limit, when a task may still clean up, "
        "is a tenth earlier); at least 10",
    )
    train_time_limit_s: int = setting(2 * 3600 - 60, "hard time limit of retraining and of evaluating a model version; at least 10")
    runtime: str = setting(
        "keras",
        "a worker's inference runtime: `keras`, `openvino` (CPU, float32), or `auto` (the first runtime plugin for the "
        "worker's device that matches Keras on a parity batch: OpenVINO on a CPU worker, Keras on a GPU worker); one "
        "that does not match, or does not run on the worker's device, is refused with a log line and Keras serves",
    )

    @field_validator("home")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("review_threshold", mode="before")
    @classmethod
    def _model_threshold(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() == "model" else value

    @field_validator("non_leukocyte_classes", "immature_classes", "trusted_proxies", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return tuple(item.strip() for item in value.split(",") if item.strip()) if isinstance(value, str) else value

    @field_validator("runtime", "signoff_blast_role", mode="before")
    @classmethod
    def _lower_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @classmethod
    def from_env(cls) -> Settings:
        """The embedded defaults with the environment applied; ValueError naming each variable that cannot be read."""
        try:
            return cls()
        except ValidationError as exc:
            raise ValueError(unreadable_settings(exc)) from None

    # pydantic's deprecated classmethod BaseModel.validate goes unused: this checks values, not input
    def validate(self) -> None:  # type: ignore[override]
        """Raise ValueError, naming the setting(s) and value(s), for a setting alone or a combination that cannot work."""
        if self.image_store not in ("file", "database"):
            raise ValueError(f"BLOODCELL_IMAGE_STORE must be 'file' or 'database', got {self.image_store!r}")
        if self.worker_device not in ("cpu", "gpu"):
            raise ValueError(f"BLOODCELL_WORKER_DEVICE must be 'cpu' or 'gpu', got {self.worker_device!r}")
        if self.classify_queue not in ("classify", "classify.gpu"):
            raise ValueError(f"BLOODCELL_CLASSIFY_QUEUE must be 'classify' or 'classify.gpu', got {self.classify_queue!r}")
        if self.review_threshold is not None and not 0.0 <= self.review_threshold <= 1.0:
            raise ValueError("BLOODCELL_REVIEW_THRESHOLD must be 'model' or a number between 0 and 1")
        if self.max_cells_per_field < 1:
            raise ValueError(f"BLOODCELL_MAX_CELLS_PER_FIELD must be at least 1, got {self.max_cells_per_field}")
        if not 0.0 <= self.unfamiliar_share <= 1.0:
            raise ValueError(f"BLOODCELL_UNFAMILIAR_SHARE must be a share between 0 and 1, got {self.unfamiliar_share}")
        if not 0.0 <= self.immature_percent <= 100.0:
            raise ValueError(f"BLOODCELL_IMMATURE_PERCENT must be a percent between 0 and 100, got {self.immature_percent}")
        if not self.session_hours > 0:
            raise ValueError(f"BLOODCELL_SESSION_HOURS must be more than 0, got {self.session_hours}")
        if self.login_attempts < 1:
            raise ValueError(f"BLOODCELL_LOGIN_ATTEMPTS must be at least 1, got {self.login_attempts}")
        if not self.login_lockout_minutes > 0:
            raise ValueError(f"BLOODCELL_LOGIN_LOCKOUT_MINUTES must be more than 0, got {self.login_lockout_minutes}")
        if self.signoff_blast_role not in ROLES:
            raise ValueError(f"BLOODCELL_SIGNOFF_BLAST_ROLE must be one of {', '.join(ROLES)}, got {self.signoff_blast_role!r}")
        if self.signoff_min_leukocytes < 0:
            raise ValueError(f"BLOODCELL_SIGNOFF_MIN_LEUKOCYTES must be 0 or more, got {self.signoff_min_leukocytes}")
        self._validate_combinations()

    def _validate_combinations(self) -> None:
        for name, limit in (("CLASSIFY", self.classify_time_limit_s), ("TRAIN", self.train_time_limit_s)):
            if limit < MIN_TIME_LIMIT_S:
                raise ValueError(f"BLOODCELL_{name}_TIME_LIMIT_S must be at least {MIN_TIME_LIMIT_S} s, got {limit}")
        longest = max(
            ("BLOODCELL_CLASSIFY_TIME_LIMIT_S", self.classify_time_limit_s),
            ("BLOODCELL_TRAIN_TIME_LIMIT_S", self.train_time_limit_s),
            key=lambda item: item[1],
        )
        if self.visibility_timeout <= longest[1]:
            # Redis would hand a task that is still running to a second worker
            raise ValueError(
                f"BLOODCELL_VISIBILITY_TIMEOUT={self.visibility_timeout} must be longer than the longest task time limit "
                f"({longest[0]}={longest[1]})"
            )
        ports = {
            "BLOODCELL_REDIS_PORT": self.redis_port,
            "BLOODCELL_API_PORT": self.api_port,
            "BLOODCELL_FLOWER_PORT": self.flower_port,
        }
        names = list(ports)
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                if ports[first] == ports[second]:
                    raise ValueError(f"{first}={ports[first]} and {second}={ports[second]}: two servers cannot listen on one port")
        if self.max_image_bytes > self.max_request_bytes:
            raise ValueError(
                f"BLOODCELL_MAX_IMAGE_BYTES={self.max_image_bytes} is above BLOODCELL_MAX_REQUEST_BYTES={self.max_request_bytes}: "
                "an image that large is refused with its request"
            )
        if self.worker_device == "gpu" and self.runtime == "openvino":
            raise ValueError(
                "BLOODCELL_WORKER_DEVICE=gpu with BLOODCELL_RUNTIME=openvino: the OpenVINO runtime runs on the CPU only; "
                "use BLOODCELL_RUNTIME=keras (or auto) on a GPU worker"
            )
        if self.webhook_attempts < 1:
            raise ValueError(f"BLOODCELL_WEBHOOK_ATTEMPTS must be at least 1, got {self.webhook_attempts}")
        if not self.sweep_interval_s > 0:
            raise ValueError(f"BLOODCELL_SWEEP_INTERVAL_S must be more than 0, got {self.sweep_interval_s}")
        if self.sweep_webhook_age_s <= WEBHOOK_TIMEOUT_S:
            # a delivery being POSTed right now would look overdue and be sent a second time
            raise ValueError(
                f"BLOODCELL_SWEEP_WEBHOOK_AGE_S={self.sweep_webhook_age_s:g} must be longer than a webhook attempt may take "
                f"({WEBHOOK_TIMEOUT_S:g} s)"
            )
        if self.sweep_interval_s > self.sweep_webhook_age_s:
            raise ValueError(
                f"BLOODCELL_SWEEP_INTERVAL_S={self.sweep_interval_s:g} is longer than BLOODCELL_SWEEP_WEBHOOK_AGE_S="
                f"{self.sweep_webhook_age_s:g}: overdue webhooks would wait for the next sweep longer than they may be overdue"
            )
        if self.retention_days < 0:
            raise ValueError(f"BLOODCELL_RETENTION_DAYS must be 0 (keep everything) or more, got {self.retention_days:g}")
        if self.sweep_orphan_age_s < MIN_ORPHAN_AGE_S:
            # a submission in progress writes its image files before it commits the rows that reference them
            raise ValueError(
                f"BLOODCELL_SWEEP_ORPHAN_AGE_S={self.sweep_orphan_age_s:g} must be at least {MIN_ORPHAN_AGE_S} s, "
                "or files of a submission in progress could be removed"
            )


def unreadable_settings(error: ValidationError) -> str:
    """One line per setting the environment gave a value that cannot be read, naming its variable."""
    first: dict[str, str] = {}
    for item in error.errors():
        if item["type"] == "default_factory_not_called":  # a default derived from a setting already named
            continue
        variable = str(item["loc"][0])  # errors are located by alias: the variable's name
        value = f"={item['input']!r}" if isinstance(item["input"], str) else ""
        first.setdefault(variable, f"{variable}{value}: {item['msg']}")  # a union (a threshold) reports each of its types
    return "; ".join(first.values())


def _shown_default(name: str) -> str:
    info = Settings.model_fields[name]
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "shown" in extra:
        return str(extra["shown"])
    value = info.default
    if value in ("", ()):
        return "empty" + (f": {extra['note']}" if "note" in extra else "")
    if isinstance(value, bool):
        text = "1" if value else "0"
    elif isinstance(value, tuple):
        text = ",".join(value)
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return f"`{text}`" + (f" ({extra['note']})" if "note" in extra else "")


def configuration_table() -> str:
    """The README's configuration table (markdown): one row per setting, in declaration order."""
    rows = [f"| `{env_name(name)}` | {_shown_default(name)} | {info.description} |" for name, info in Settings.model_fields.items()]
    return "\n".join(["| variable | default | effect |", "| --- | --- | --- |", *rows])


def with_configuration_table(readme: str) -> str:
    """README text with the generated table between TABLE_START and TABLE_END in place of what was there."""
    pattern = re.compile(f"{re.escape(TABLE_START)}\n.*?{re.escape(TABLE_END)}", re.DOTALL)
    if not pattern.search(readme):
        raise ValueError(f"the README has no {TABLE_START!r} ... {TABLE_END!r} block")
    # the blank line ends the table before the closing comment
    return pattern.sub(lambda _: f"{TABLE_START}\n{configuration_table()}\n\n{TABLE_END}", readme)
