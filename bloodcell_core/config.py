"""One typed settings object, read from BLOODCELL_* environment variables (documented in the README)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The web console's roles, lowest first: the values of service.states.Role (the top level imports no room).
ROLES = ("technologist", "supervisor", "admin")
MIN_TIME_LIMIT_S = 10  # a task time limit below this would kill ordinary work
WEBHOOK_TIMEOUT_S = 10.0  # one webhook POST waits this long for the receiver
MIN_ORPHAN_AGE_S = 3600  # the youngest unreferenced image file the sweep may remove


def _home() -> Path:
    return Path(os.environ.get("BLOODCELL_HOME", Path.home() / ".bloodcell")).expanduser()


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


def _threshold(value: str) -> float | None:
    return None if value.strip().lower() == "model" else float(value)


@dataclass(frozen=True)
class Settings:
    """Every setting with its embedded default; ``Settings.from_env()`` applies the environment."""

    home: Path
    broker_url: str
    result_backend: str
    database_url: str
    image_store: str  # "file" (BLOODCELL_HOME/images) or "database" (image bytes in the SQL database)
    models_dir: Path  # where model versions' directories live; shared by every worker
    default_model: Path  # registered as the first production model on an empty database
    worker_device: str  # "cpu" or "gpu": which classification queue a worker takes
    classify_queue: str  # where producers send classification tasks: "classify" or "classify.gpu"
    review_threshold: float | None  # cells below this confidence go to review; None: the model's own (calibrated)
    blast_count: int  # blast flag when myeloblasts reach this count ...
    blast_percent: float  # ... or this percent of classified cells
    blast_class: str
    non_leukocyte_classes: tuple[str, ...]  # counted, but not towards the 100 leukocytes of the differential
    immature_classes: tuple[str, ...]  # immature-cell flag when these together reach ...
    immature_percent: float  # ... this percent of classified cells
    unfamiliar_share: float  # unfamiliar-image warning when more than this share of cells is unlike the training images
    flower_port: int
    flower_basic_auth: str  # "user:password"; empty: `bloodcell up` makes a one-off `ops` password per start
    redis_port: int  # the local redis-server `bloodcell up` starts
    api_host: str  # where `bloodcell api` / `bloodcell up` serve the HTTP API
    api_port: int
    max_image_bytes: int  # HTTP API limits, answered with 413 before anything is stored
    max_images_per_sample: int
    max_image_pixels: int  # width x height from the image header: refuses decompression bombs
    max_request_bytes: int
    max_cells_per_field: int  # a whole field with more white cells than this fails (nothing of it is kept)
    field_locator: str  # the cell-locator plugin that finds the white cells in submitted fields
    webhook_attempts: int  # a webhook is tried this often, with exponential backoff, before it is marked failed
    accession_system: str  # FHIR identifier system / HL7 namespace of the LIMS accession ids
    evaluation_set: str  # the registered evaluation set the promotion gate compares models on
    promotion_margin: float  # a candidate must beat production by this much on accuracy and macro-F1
    shadow: bool  # workers also classify live samples with the newest candidate (stored, not reported)
    promotion_verified: bool  # the gate also compares candidate and production on the lab's signed-off samples
    visibility_timeout: int  # seconds before Redis hands an unacknowledged task of a vanished worker to another
    classify_time_limit_s: int  # hard time limit of every task but retraining and evaluation (samples, webhooks, ...)
    train_time_limit_s: int  # hard time limit of retraining and of evaluating a model version
    runtime: str  # inference runtime of this worker: keras, a runtime plugin's name (openvino), or auto
    session_hours: float  # a web console login lasts this long
    login_attempts: int  # failed logins (per user name or per address) before logins are refused for ...
    login_lockout_minutes: float  # ... this long after the oldest counted failure
    signoff_blast_role: str  # the least role that may sign off a sample with a blast flag
    signoff_min_leukocytes: int  # a sign-off of a sample with fewer classified leukocytes must confirm it
    trusted_proxies: tuple[str, ...]  # addresses whose X-Forwarded-For / -Proto the API believes; none by default
    sweep_interval_s: float  # Celery beat runs the sweep this often
    sweep_webhook_age_s: float  # the sweep re-queues a pending webhook delivery this long overdue
    sweep_orphan_age_s: float  # the sweep removes an image file no row references once it is this old
    retention_days: float  # `bloodcell retention` purges samples older than this; 0: keep everything

    @classmethod
    def from_env(cls) -> "Settings":
        home = _home()
        env = os.environ.get
        redis_port = int(env("BLOODCELL_REDIS_PORT", "6379"))
        return cls(
            home=home,
            broker_url=env("BLOODCELL_BROKER_URL", f"redis://127.0.0.1:{redis_port}/0"),
            result_backend=env("BLOODCELL_RESULT_BACKEND", f"redis://127.0.0.1:{redis_port}/1"),
            database_url=env("BLOODCELL_DATABASE_URL", f"sqlite:///{home / 'bloodcell.db'}"),
            image_store=env("BLOODCELL_IMAGE_STORE", "file"),
            models_dir=Path(env("BLOODCELL_MODELS_DIR", str(home / "models"))),
            default_model=Path(env("BLOODCELL_DEFAULT_MODEL", str(PROJECT_ROOT / "models" / "default"))),
            worker_device=env("BLOODCELL_WORKER_DEVICE", "cpu"),
            classify_queue=env("BLOODCELL_CLASSIFY_QUEUE", "classify"),
            review_threshold=_threshold(env("BLOODCELL_REVIEW_THRESHOLD", "model")),
            blast_count=int(env("BLOODCELL_BLAST_COUNT", "5")),
            blast_percent=float(env("BLOODCELL_BLAST_PERCENT", "20")),
            blast_class=env("BLOODCELL_BLAST_CLASS", "myeloblast"),
            non_leukocyte_classes=tuple(
                c.strip() for c in env("BLOODCELL_NON_LEUKOCYTE_CLASSES", "erythroblast,platelet").split(",") if c.strip()
            ),
            immature_classes=tuple(c.strip() for c in env("BLOODCELL_IMMATURE_CLASSES", "ig,myeloblast").split(",") if c.strip()),
            immature_percent=float(env("BLOODCELL_IMMATURE_PERCENT", "5")),
            unfamiliar_share=float(env("BLOODCELL_UNFAMILIAR_SHARE", "0.1")),
            flower_port=int(env("BLOODCELL_FLOWER_PORT", "5555")),
            flower_basic_auth=env("BLOODCELL_FLOWER_BASIC_AUTH", ""),
            redis_port=redis_port,
            api_host=env("BLOODCELL_API_HOST", "127.0.0.1"),
            api_port=int(env("BLOODCELL_API_PORT", "8000")),
            max_image_bytes=int(env("BLOODCELL_MAX_IMAGE_BYTES", str(10 * 2**20))),
            max_images_per_sample=int(env("BLOODCELL_MAX_IMAGES_PER_SAMPLE", "1000")),
            max_image_pixels=int(env("BLOODCELL_MAX_IMAGE_PIXELS", str(4096 * 4096))),
            max_request_bytes=int(env("BLOODCELL_MAX_REQUEST_BYTES", str(256 * 2**20))),
            max_cells_per_field=int(env("BLOODCELL_MAX_CELLS_PER_FIELD", "50")),
            field_locator=env("BLOODCELL_FIELD_LOCATOR", "stain_nucleus"),
            webhook_attempts=int(env("BLOODCELL_WEBHOOK_ATTEMPTS", "8")),
            accession_system=env("BLOODCELL_ACCESSION_SYSTEM", "urn:bloodcell:accession"),
            evaluation_set=env("BLOODCELL_EVALUATION_SET", "default"),
            promotion_margin=float(env("BLOODCELL_PROMOTION_MARGIN", "0.001")),
            shadow=env("BLOODCELL_SHADOW", "0").strip().lower() in ("1", "true", "yes", "on"),
            promotion_verified=env("BLOODCELL_PROMOTION_VERIFIED", "0").strip().lower() in ("1", "true", "yes", "on"),
            visibility_timeout=int(env("BLOODCELL_VISIBILITY_TIMEOUT", str(2 * 3600))),
            classify_time_limit_s=int(env("BLOODCELL_CLASSIFY_TIME_LIMIT_S", "660")),
            train_time_limit_s=int(env("BLOODCELL_TRAIN_TIME_LIMIT_S", str(2 * 3600 - 60))),
            runtime=env("BLOODCELL_RUNTIME", "keras").strip().lower(),
            session_hours=float(env("BLOODCELL_SESSION_HOURS", "8")),
            login_attempts=int(env("BLOODCELL_LOGIN_ATTEMPTS", "5")),
            login_lockout_minutes=float(env("BLOODCELL_LOGIN_LOCKOUT_MINUTES", "15")),
            signoff_blast_role=env("BLOODCELL_SIGNOFF_BLAST_ROLE", "supervisor").strip().lower(),
            signoff_min_leukocytes=int(env("BLOODCELL_SIGNOFF_MIN_LEUKOCYTES", "100")),
            trusted_proxies=tuple(a.strip() for a in env("BLOODCELL_TRUSTED_PROXIES", "").split(",") if a.strip()),
            sweep_interval_s=float(env("BLOODCELL_SWEEP_INTERVAL_S", "60")),
            sweep_webhook_age_s=float(env("BLOODCELL_SWEEP_WEBHOOK_AGE_S", "60")),
            sweep_orphan_age_s=float(env("BLOODCELL_SWEEP_ORPHAN_AGE_S", str(24 * 3600))),
            retention_days=float(env("BLOODCELL_RETENTION_DAYS", "0")),
        )

    def validate(self) -> None:
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
