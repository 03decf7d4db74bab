"""Whether the pages, the scrape, the sweep and submission stay fast as a laboratory's history grows; prints JSON.

    python bench/bench_scale.py [--sizes 10000,100000,1000000,10000000] [--repeat 5] [--database-url URL]
                                [--out docs/scale.json] [--plot docs/scale.png]

For each size N (predictions, one per cell), a fresh PostgreSQL database is migrated and filled in bulk
with COPY (psycopg 3), never through the API, with a synthetic history in a large laboratory's
proportions: samples of 100-200 cells (150 on average), one image and one prediction per cell, one
report per sample, 2 % of the cells relabelled by a technologist, audit events (submitted, classified,
each relabel, signed off) and two webhook deliveries (classified, signed off) per sample, one sample
every 30 s up to now. All but the last PENDING samples are signed off; the pending ones wait in the
review queue. Then, through the real HTTP API and console app (in process, FastAPI's TestClient, a
logged-in console user, real Redis), it times the median of REPEAT runs of:

    scrape             GET /metrics
    worklist           GET /ui/           and its refresh GET /ui/samples/rows (worklist_refresh)
    review_queue       GET /ui/review
    report             GET /v1/samples/{id}  (one sample's report, JSON)
    sample_page        GET /ui/samples/{id}
    relabel            POST /ui/samples/{id}/cells/{sha256}/label
    sign_off           POST /ui/samples/{id}/sign-off
    audit_page         GET /ui/audit       and one sample's trail, GET /ui/audit?subject=ID (audit_subject)
    sweep              service.sweepers.sweep (lost webhooks, the journal's orphan files)
    submission         POST /v1/samples   (SUBMIT_IMAGES real kaggle5 images, a new accession id each time)

and, once, the migration that touches the largest tables (0010: indexes on the cells, the running totals
backfilled from every cell) down and up again. Without --database-url it starts its own PostgreSQL
(tests/servers.py) and Redis in a temporary folder. Compare ratios across sizes: the machines are shared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator
from unittest import mock

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT / "tests"))  # the servers the tests start

import psycopg  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from servers import PostgresServer, RedisServer  # noqa: E402
from sqlalchemy import select  # noqa: E402

from bloodcell_core.config import Settings  # noqa: E402
from bloodcell_core.ml.dataset import list_class_files  # noqa: E402
from bloodcell_core.service import db, review, sweepers  # noqa: E402
from bloodcell_core.service.api_clients import create_client  # noqa: E402
from bloodcell_core.service.tables import ApiClient, ModelVersion  # noqa: E402
from bloodcell_core.service.users import create_user  # noqa: E402
from bloodcell_core.service.versions import ensure_production_model  # noqa: E402

DATA = PROJECT.parent / "shared" / "data" / "kaggle5"
SAMPLE_SPACING = timedelta(seconds=30)  # 2,880 samples a day: a large hospital laboratory
PENDING = 40  # the newest samples, not signed off yet: the review queue
UNSURE = 5  # cells of a pending sample under the review threshold
TIMED_CELLS = 150  # cells of the sample whose page, relabel and sign-off are timed, the same at every size
RELABEL_SHARE = 0.02
SUBMIT_IMAGES = 20
PASSWORD = "bench password 1"
TARGET_MS = 200.0  # at the largest size, for the pages a technologist waits on and the scrape
TARGET_MS_OPERATIONS = ("scrape", "worklist", "worklist_refresh", "review_queue", "sample_page", "sign_off")


def cells_of(k: int) -> int:
    """Cells of the k-th sample: 100..200, 150 on average."""
    return 100 + (k * 37) % 101


def sha(kind: str, n: int) -> str:
    return hashlib.sha256(f"{kind}{n}".encode()).hexdigest()


class History:
    """The synthetic rows, written table by table with COPY."""

    def __init__(self, n_predictions: int, version_id: int, classes: list[str], review_threshold: float, ood_threshold: float) -> None:
        self.version_id, self.classes = version_id, classes
        self.review_threshold, self.ood_threshold = review_threshold, ood_threshold
        self.sizes: list[int] = []
        total = 0
        while total < n_predictions:
            size = min(cells_of(len(self.sizes)), n_predictions - total)
            self.sizes.append(size)
            total += size
        self.start = datetime.now(timezone.utc) - SAMPLE_SPACING * (len(self.sizes) + 1)
        # a pool of model outputs: (label, confidence, probabilities JSON, ood score)
        self.outputs = []
        for j in range(97):  # all over the review threshold and familiar: see ``output`` for the others
            label = classes[(j * 7) % len(classes)]
            confidence = 0.99 + (j % 10) / 1000
            rest = (1 - confidence) / (len(classes) - 1)
            probabilities = json.dumps({c: round(confidence if c == label else rest, 5) for c in classes})
            self.outputs.append((label, confidence, probabilities, ood_threshold * (0.3 + (j % 13) / 26)))

    def output(self, k: int, c: int, g: int) -> tuple[str, float, str, float]:
        """The model's output for a cell: the first UNSURE cells of a pending sample are under the review
        threshold (a technologist looks at them before sign-off; those of signed-off samples were looked at)."""
        label, confidence, probabilities, ood = self.outputs[g % len(self.outputs)]
        return (label, 0.6, probabilities, ood) if self.pending(k) and c < UNSURE else (label, confidence, probabilities, ood)

    @property
    def n_pending(self) -> int:
        return min(PENDING, len(self.sizes) // 2)  # a tiny history (the tests' run) keeps signed-off samples

    def signed_off_sample(self) -> int:
        """The sample whose report, page, relabel and sign-off are timed: in the middle of the signed-off
        history, with TIMED_CELLS cells at every size (a tiny history: the middle one)."""
        signed_off = len(self.sizes) - self.n_pending
        nearest_first = sorted(range(signed_off), key=lambda k: abs(k - signed_off // 2))
        return next((k for k in nearest_first if self.sizes[k] == TIMED_CELLS), signed_off // 2)

    def at(self, k: int) -> datetime:
        return self.start + SAMPLE_SPACING * k

    def pending(self, k: int) -> bool:
        return k >= len(self.sizes) - self.n_pending

    def accession(self, k: int) -> str:
        return f"S-{k:08d}"

    def cells(self) -> Iterator[tuple[int, int, int]]:
        """(sample index, cell index in the sample, global cell index)."""
        g = 0
        for k, size in enumerate(self.sizes):
            for c in range(size):
                yield k, c, g
                g += 1

    def fill(self, conn: psycopg.Connection, client_id: int) -> dict[str, int]:
        counts = {}
        with conn.cursor() as cur:
            restore = drop_constraints_and_indexes(cur)
            counts["samples"] = self._copy(cur, "samples", self._samples(client_id))
            counts["images"] = self._copy(cur, "images", ((sha("cell", g), 30000, self.at(k)) for k, _, g in self.cells()))
            counts["sample_images"] = self._copy(cur, "sample_images", self._sample_images())
            counts["predictions"] = self._copy(cur, "predictions", self._predictions())
            counts["sample_reports"] = self._copy(cur, "sample_reports", self._reports())
            counts["cell_reviews"] = self._copy(cur, "cell_reviews", self._reviews())
            first_event = cur.execute("SELECT coalesce(max(id), 0) FROM audit_log").fetchone()[0]  # type: ignore[index]
            counts["audit_log"] = self._copy(cur, "audit_log", self._audit(first_event))
            counts["webhook_deliveries"] = self._copy(cur, "webhook_deliveries", self._deliveries(client_id))
            for statement in restore:
                cur.execute(statement)
            cur.execute(  # the running totals, as the migration backfills them
                "INSERT INTO cell_counts SELECT p.model_version_id, p.label, count(*), "
                "sum(CASE WHEN p.confidence < %s OR p.ood_score > %s THEN 1 ELSE 0 END), "
                "sum(CASE WHEN p.ood_score > %s THEN 1 ELSE 0 END) FROM predictions p GROUP BY 1, 2",
                (self.review_threshold, self.ood_threshold, self.ood_threshold),
            )
            cur.execute(
                "INSERT INTO relabel_counts SELECT %s, coalesce(previous_label, 'none'), label, count(*) "
                "FROM cell_reviews GROUP BY 2, 3",
                (self.version_id,),
            )
            for table in (
                "samples",
                "sample_images",
                "predictions",
                "sample_reports",
                "cell_reviews",
                "audit_log",
                "webhook_deliveries",
            ):
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        conn.commit()
        return counts

    @staticmethod
    def _copy(cur: psycopg.Cursor, table: str, rows: Iterator[tuple[Any, ...]]) -> int:
        first = next(rows)
        columns = COLUMNS[table]
        assert len(first) == len(columns), table
        n = 0
        with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            copy.write_row(first)
            n += 1
            for row in rows:
                copy.write_row(row)
                n += 1
        return n

    def _samples(self, client_id: int) -> Iterator[tuple[Any, ...]]:
        for k in range(len(self.sizes)):
            at = self.at(k)
            if self.pending(k):
                yield (k + 1, self.accession(k), "needs_review", None, client_id, "preliminary", None, None, at, at)
            else:
                signed = at + timedelta(hours=2)
                yield (k + 1, self.accession(k), "done", None, client_id, "final", "anna", signed, at, signed)

    def _sample_images(self) -> Iterator[tuple[Any, ...]]:
        for k, c, g in self.cells():
            yield (g + 1, k + 1, sha("cell", g), f"cell-{c:03d}.jpg", "done", None)

    def _predictions(self) -> Iterator[tuple[Any, ...]]:
        for k, c, g in self.cells():
            label, confidence, probabilities, ood = self.output(k, c, g)
            yield (g + 1, sha("cell", g), self.version_id, label, confidence, probabilities, 3.1, 9.7, ood, "bench@worker", self.at(k))

    def _reports(self) -> Iterator[tuple[Any, ...]]:
        counts = json.dumps({c: 0 for c in self.classes} | {"neutrophil": 90, "lymphocyte": 40, "monocyte": 10, "eosinophil": 10})
        percent = json.dumps(
            {c: 0.0 for c in self.classes} | {"neutrophil": 60.0, "lymphocyte": 26.67, "monocyte": 6.67, "eosinophil": 6.67}
        )
        first = 0
        for k, size in enumerate(self.sizes):
            review = []
            if self.pending(k):  # the cells the model was unsure of, as the report lists them
                for c in range(UNSURE):
                    label, confidence, _, _ = self.output(k, c, first + c)
                    review.append(
                        {
                            "name": f"cell-{c:03d}.jpg",
                            "image_sha256": sha("cell", first + c),
                            "label": label,
                            "confidence": confidence,
                            "reasons": ["low confidence"],
                        }
                    )
            yield (
                k + 1,
                k + 1,
                self.version_id,
                size,
                size,
                0,
                counts,
                percent,
                0,
                0.0,
                False,
                self.review_threshold,
                self.ood_threshold,
                0,
                "[]",
                json.dumps(review),
                "[]",
                self.at(k),
            )
            first += size

    def _reviews(self) -> Iterator[tuple[Any, ...]]:
        n, step = 0, round(1 / RELABEL_SHARE)
        for k, c, g in self.cells():
            if g % step == 0 and not self.pending(k):
                n += 1
                label = self.outputs[g % len(self.outputs)][0]
                yield (n, k + 1, sha("cell", g), label, "lymphocyte", "anna", "nucleus shape", self.at(k) + timedelta(hours=1))

    def _audit(self, n: int) -> Iterator[tuple[Any, ...]]:
        """Events numbered after N (the events of setting up: the model's registration, the API clients)."""
        step = round(1 / RELABEL_SHARE)
        first = 0
        for k, size in enumerate(self.sizes):
            at, subject = self.at(k), self.accession(k)
            events = [(at, "api:lims", "sample.submitted", json.dumps({"images": size}))]
            events.append((at + timedelta(seconds=20), "bench@worker", "sample.classified", '{"status": "done"}'))
            if not self.pending(k):
                for g in range(first, first + size):
                    if g % step == 0:
                        events.append(
                            (at + timedelta(hours=1), "user:anna", "cell.relabelled", json.dumps({"image_sha256": sha("cell", g)}))
                        )
                events.append((at + timedelta(hours=2), "user:anna", "sample.signed_off", '{"reviewer": "anna"}'))
            for event_at, actor, action, details in events:
                n += 1
                yield (n, event_at, actor, action, subject, details)
            first += size

    def _deliveries(self, client_id: int) -> Iterator[tuple[Any, ...]]:
        n = 0
        for k in range(len(self.sizes)):
            events = ["sample.classified"] if self.pending(k) else ["sample.classified", "sample.signed_off"]
            for event in events:
                n += 1
                at = self.at(k)
                yield (
                    n,
                    client_id,
                    k + 1,
                    event,
                    "http://lims.example/hook",
                    '{"event": "' + event + '"}',
                    "delivered",
                    1,
                    200,
                    None,
                    at,
                    at,
                    None,
                    at,
                )


def drop_constraints_and_indexes(cur: psycopg.Cursor) -> list[str]:
    """Drop the foreign keys, unique constraints and secondary indexes of the filled tables (a bulk load
    then writes only the heap and the primary keys); returns the statements that put them back, each index
    built once by sorting and each foreign key checked by one join."""
    tables = list(COLUMNS)
    constraints = cur.execute(
        "SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE contype IN ('f', 'u') AND conrelid::regclass::text = ANY(%s) ORDER BY contype",
        (tables,),
    ).fetchall()
    indexes = cur.execute(
        "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index i WHERE indrelid::regclass::text = ANY(%s) "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
        (tables,),
    ).fetchall()
    for table, name, _, _ in constraints:  # foreign keys ('f') first: a unique constraint may be referenced
        cur.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for name, _ in indexes:
        cur.execute(f"DROP INDEX {name}")
    unique = [f'ALTER TABLE {t} ADD CONSTRAINT "{n}" {d}' for t, n, kind, d in constraints if kind == "u"]
    foreign = [f'ALTER TABLE {t} ADD CONSTRAINT "{n}" {d}' for t, n, kind, d in constraints if kind == "f"]
    return ["SET maintenance_work_mem = '512MB'", *unique, *(d for _, d in indexes), *foreign]


COLUMNS = {
    "samples": [
        "id",
        "accession_id",
        "status",
        "error",
        "client_id",
        "report_status",
        "signed_off_by",
        "signed_off_at",
        "created_at",
        "updated_at",
    ],
    "images": ["sha256", "n_bytes", "created_at"],
    "sample_images": ["id", "sample_id", "image_sha256", "name", "status", "error"],
    "predictions": [
        "id",
        "image_sha256",
        "model_version_id",
        "label",
        "confidence",
        "probabilities",
        "preprocess_ms",
        "predict_ms",
        "ood_score",
        "worker",
        "created_at",
    ],
    "sample_reports": [
        "id",
        "sample_id",
        "model_version_id",
        "n_cells",
        "n_classified",
        "n_failed",
        "counts",
        "percent",
        "blast_count",
        "blast_percent",
        "blast_flag",
        "review_threshold",
        "ood_threshold",
        "n_unfamiliar",
        "flags",
        "needs_review",
        "failed",
        "created_at",
    ],
    "cell_reviews": ["id", "sample_id", "image_sha256", "previous_label", "label", "reviewer", "reason", "created_at"],
    "audit_log": ["id", "at", "actor", "action", "subject", "details"],
    "webhook_deliveries": [
        "id",
        "client_id",
        "sample_id",
        "event",
        "url",
        "payload",
        "status",
        "attempts",
        "last_status_code",
        "last_error",
        "created_at",
        "delivered_at",
        "task_id",
        "due_at",
    ],
}


def timed(call: Callable[[], Any], repeat: int, prepare: Callable[[], Any] = lambda: None) -> float:
    """Median milliseconds of REPEAT calls after one warm-up call; PREPARE runs, untimed, before each call."""
    prepare()
    call()
    times = []
    for _ in range(repeat):
        prepare()
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 1)


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.text[:500])
    return response


def measure(settings: Settings, history: History, repeat: int, images: list[tuple[str, bytes]]) -> dict[str, float]:
    from api.app import create_app

    with db.session_scope(settings.database_url) as session:
        create_user(session, name="bench", role="admin", password=PASSWORD, actor="bench")
        token = create_client(
            session, name="bench-metrics", scopes=["metrics", "read", "submit"], webhook_url=None, actor="bench"
        ).token
    app = create_app(settings)
    api = TestClient(app, headers={"Authorization": f"Bearer {token}"})
    browser = TestClient(app, follow_redirects=False)
    form = ok(browser.get("/ui/login")).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert csrf
    ok(browser.post("/ui/login", data={"name": "bench", "password": PASSWORD, "csrf_token": csrf[1], "next": "/ui/"}), 303)
    page = ok(browser.get("/ui/")).text
    csrf = re.search(r'data-csrf="([^"]+)"', page)
    assert csrf, page[:500]
    token_form = {"csrf_token": csrf[1]}

    middle = history.signed_off_sample()
    sample, cell = history.accession(middle), sha("cell", sum(history.sizes[:middle]))
    labels = iter(["monocyte", "lymphocyte"] * (repeat + 1))
    submissions = iter(range(repeat + 1))

    def submit() -> None:
        files = [("images", (name, data, "image/jpeg")) for name, data in images]
        ok(api.post("/v1/samples", data={"accession_id": f"S-NEW-{next(submissions)}"}, files=files), 202)

    operations: dict[str, Callable[[], Any]] = {
        "scrape": lambda: ok(api.get("/metrics")),
        "worklist": lambda: ok(browser.get("/ui/")),
        "worklist_refresh": lambda: ok(browser.get("/ui/samples/rows")),
        "review_queue": lambda: ok(browser.get("/ui/review")),
        "report": lambda: ok(api.get(f"/v1/samples/{sample}")),
        "sample_page": lambda: ok(browser.get(f"/ui/samples/{sample}")),
        "relabel": lambda: ok(
            browser.post(f"/ui/samples/{sample}/cells/{cell}/label", data=token_form | {"label": next(labels), "reason": "bench"}), 303
        ),
        # an unchanged report cannot be signed off twice: each timed sign-off follows an (untimed) relabel that
        # withdraws the last approval; the bench sample is small, so the sign-off confirms it as the rule asks
        "sign_off": lambda: ok(
            browser.post(f"/ui/samples/{sample}/sign-off", data=token_form | {"comment": "bench", "confirm_incomplete": "true"}), 303
        ),
        "audit_page": lambda: ok(browser.get("/ui/audit")),
        "audit_subject": lambda: ok(browser.get(f"/ui/audit?subject={sample}")),
        "sweep": lambda: sweepers.sweep(settings, lambda delivery_id, task_id: None),
        "submission": submit,
    }

    def change_a_label() -> None:
        with db.session_scope(settings.database_url) as session:
            current = next(c.label for c in review.get_cells(session, accession_id=sample) if c.image_sha256 == cell)
            new_label = "monocyte" if current != "monocyte" else "lymphocyte"
            review.relabel_cell(
                session,
                settings=settings,
                accession_id=sample,
                image_sha256=cell,
                label=new_label,
                reviewer="bench",
                reason="bench",
                actor="user:bench",
            )

    return {name: timed(call, repeat, change_a_label if name == "sign_off" else lambda: None) for name, call in operations.items()}


# the queries behind the operations (as the service sends them, with the bench's values), and the scrape's
# former join over every cell: EXPLAIN ANALYZE shows which index each one uses and how long it ran
QUERIES = {
    "worklist": "SELECT s.*, r.* FROM samples s LEFT JOIN sample_reports r ON r.sample_id = s.id ORDER BY s.id DESC LIMIT 200",
    "review_queue": "SELECT * FROM samples WHERE status = 'needs_review' ORDER BY created_at LIMIT 200",
    "sample_cells": "SELECT * FROM sample_images WHERE sample_id = %(sample_pk)s ORDER BY id",
    "sample_predictions": "SELECT * FROM predictions WHERE model_version_id = %(version_id)s AND image_sha256 IN "
    "(SELECT image_sha256 FROM sample_images WHERE sample_id = %(sample_pk)s)",
    "audit_subject": "SELECT * FROM audit_log WHERE subject = %(accession_id)s ORDER BY id DESC LIMIT 500",
    "scrape_cells": "SELECT v.version, c.* FROM cell_counts c JOIN model_versions v ON v.id = c.model_version_id",
    "scrape_samples_by_status": "SELECT status, count(*) FROM samples GROUP BY status",
    "scrape_webhooks_by_status": "SELECT status, count(*) FROM webhook_deliveries GROUP BY status",
    "scrape_turnaround": "SELECT s.created_at, min(a.at) FROM samples s JOIN audit_log a ON a.subject = s.accession_id "
    "AND a.action = 'sample.classified' WHERE s.created_at >= now() - interval '15 minutes' "
    "AND a.at >= now() - interval '15 minutes' GROUP BY s.id, s.created_at",
    "sweep_overdue_webhooks": "SELECT id FROM webhook_deliveries WHERE status = 'pending' AND due_at < now() - interval '60 seconds'",
    "retention_old_samples": "SELECT id FROM samples WHERE created_at < now() - interval '3650 days' "
    "AND status IN ('done', 'needs_review', 'failed') ORDER BY id LIMIT 200",
    "former_scrape_cells_join": "SELECT v.version, p.label, count(*), "
    "sum(CASE WHEN p.confidence < r.review_threshold THEN 1 ELSE 0 END) "
    "FROM sample_images c JOIN sample_reports r ON r.sample_id = c.sample_id JOIN predictions p ON "
    "p.image_sha256 = c.image_sha256 AND p.model_version_id = r.model_version_id JOIN model_versions v ON "
    "v.id = r.model_version_id GROUP BY v.version, p.label",
}


def explain(conn: psycopg.Connection, history: History, with_plans: bool) -> dict[str, Any]:
    """Each query's execution time (ms, EXPLAIN ANALYZE) and, WITH_PLANS, its plan."""
    middle = history.signed_off_sample()
    values = {"sample_pk": middle + 1, "version_id": history.version_id, "accession_id": history.accession(middle)}
    result: dict[str, Any] = {}
    for name, query in QUERIES.items():
        lines = [row[0] for row in conn.execute(f"EXPLAIN (ANALYZE, COSTS OFF) {query}", values).fetchall()]  # type: ignore[arg-type]
        took = next(float(line.split()[2]) for line in lines if line.startswith("Execution Time"))
        result[name] = {"ms": took, "plan": lines} if with_plans else {"ms": took}
    return result


def time_migration(url: str) -> float:
    """Seconds of migration 0010 (after going back to 0009): its indexes and its backfill read every cell."""
    from alembic import command

    config = db.alembic_config(url)
    command.downgrade(config, "0009")
    start = time.perf_counter()
    command.upgrade(config, "head")
    return round(time.perf_counter() - start, 2)


def run_size(
    n: int, url: str, redis_url: str, home: Path, repeat: int, images: list[tuple[str, bytes]], with_plans: bool
) -> dict[str, Any]:
    env = {
        "BLOODCELL_DATABASE_URL": url,
        "BLOODCELL_BROKER_URL": f"{redis_url}/0",
        "BLOODCELL_RESULT_BACKEND": f"{redis_url}/1",
        "BLOODCELL_HOME": str(home),
    }
    with mock.patch.dict(os.environ, env):
        settings = Settings.from_env()
    db.upgrade(url)
    ensure_production_model(settings)
    with db.session_scope(url) as session:
        version = session.scalars(select(ModelVersion)).one()
        create_client(session, name="lims", scopes=["submit", "read"], webhook_url="http://lims.example/hook", actor="bench")
        client_id = session.scalars(select(ApiClient.id).where(ApiClient.name == "lims")).one()
        calibration = version.metrics.get("calibration") or {}
        history = History(n, version.id, list(version.classes), calibration["review_threshold"], calibration["ood"]["threshold"])
    start = time.perf_counter()
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        rows = history.fill(conn, client_id)
        fill_s = time.perf_counter() - start
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
        size_mb = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0] / 2**20  # type: ignore[index]
    result: dict[str, Any] = {"predictions": n, "rows": rows, "fill_s": round(fill_s, 1), "database_mib": round(size_mb)}
    result["ms"] = measure(settings, history, repeat, images)
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        result["queries"] = explain(conn, history, with_plans)
    result["migration_0010_s"] = time_migration(url)
    db.get_engine(url).dispose()
    return result


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["predictions"] for r in results]
    fig, ax = plt.subplots(figsize=(8, 5))
    for name in results[0]["ms"]:
        ax.plot(sizes, [r["ms"][name] for r in results], marker="o", label=name)
    ax.plot(sizes, [r["migration_0010_s"] * 1000 for r in results], marker="x", linestyle="--", label="migration 0010")
    ax.axhline(TARGET_MS, color="grey", linestyle=":", label=f"{TARGET_MS:g} ms target")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="predictions in the database (history size)",
        ylabel="median ms",
        title="bloodcell: operations against history size (PostgreSQL)",
    )
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def verdict(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Each operation's time at the largest size over the smallest, and which miss the targets."""
    first, last = results[0]["ms"], results[-1]["ms"]
    ratios = {name: round(last[name] / first[name], 2) for name in first}
    return {
        "largest_over_smallest": ratios,
        "over_2x": sorted(name for name, ratio in ratios.items() if ratio > 2),
        f"over_{TARGET_MS:g}_ms": sorted(name for name in TARGET_MS_OPERATIONS if last[name] > TARGET_MS),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000,10000000", help="history sizes, in predictions")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each operation (the median is reported)")
    parser.add_argument("--database-url", help="a PostgreSQL server (postgresql+psycopg://.../postgres) to create the databases on")
    parser.add_argument("--out", type=Path, help="also write the JSON here (e.g. docs/scale.json)")
    parser.add_argument("--plot", type=Path, help="write the plot of time against history size here (e.g. docs/scale.png)")
    args = parser.parse_args()
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    paths = sorted(path for _, path in list_class_files(DATA))[:SUBMIT_IMAGES]
    images = [(path.name, path.read_bytes()) for path in paths]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        # its own folder right under /tmp, as the tests do: the postgres user must reach it
        postgres = None if args.database_url else PostgresServer(Path(tempfile.mkdtemp(prefix="bench-scale-pg-"))).start()
        try:
            for n in sizes:
                name = f"bench_scale_{n}"
                if postgres is not None:
                    url = postgres.create_database(name)
                else:
                    with psycopg.connect(args.database_url.replace("+psycopg", ""), autocommit=True) as admin:
                        admin.execute(f"DROP DATABASE IF EXISTS {name}")
                        admin.execute(f"CREATE DATABASE {name}")
                    url = args.database_url.rsplit("/", 1)[0] + f"/{name}"
                results.append(run_size(n, url, redis.url, Path(tmp) / f"home-{n}", args.repeat, images, n == max(sizes)))
                print(json.dumps(results[-1]), file=sys.stderr)
        finally:
            redis.stop()
            if postgres is not None:
                postgres.stop()
                shutil.rmtree(postgres.directory, ignore_errors=True)
    report = {"sizes": sizes, "repeat": args.repeat, "results": results, "verdict": verdict(results)}
    if args.plot:
        plot(results, args.plot)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
