"""Load: 10,000 real images through the HTTP API of a local stack; prints JSON.

    python bench/bench_load.py [--images 10000] [--per-sample 100] [--senders 4] [--workers 1]

Starts `bloodcell up` pieces on embedded defaults (redis-server, SQLite, file image store, the HTTP
API, Celery workers) in a temporary BLOODCELL_HOME, creates an API token, and POSTs images with
distinct bytes from kaggle5 and pbc8 (read in place, never written anywhere) as samples of
PER_SAMPLE images from SENDERS threads. Then it waits for every report and checks the database:
as many samples, cells and predictions as were submitted, no failed cell, no HTTP error. Reports
images/s from the first POST to the last report, and the POST latency.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

import cv2  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
from bench_queue import LocalStack, percentile  # noqa: E402
from sqlalchemy import func, select  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bloodcell_core.clients.http import HttpApiError, HttpClient  # noqa: E402
from bloodcell_core.ml.dataset import list_class_files, read_image_file  # noqa: E402
from bloodcell_core.service import db, tables  # noqa: E402
from bloodcell_core.service.api_clients import create_client  # noqa: E402

DATA = PROJECT.parent / "shared" / "data"


def distinct_images(count: int) -> list[tuple[str, bytes]]:
    """COUNT images with distinct bytes: the distinct files of kaggle5 and pbc8 (8,484: three pbc8 classes
    link to kaggle5's files), then lossless PNG re-encodings of them in memory (new bytes, same pixels)."""
    images, seen = [], set()
    for dataset in ("kaggle5", "pbc8"):
        for _, path in list_class_files(DATA / dataset):
            data = read_image_file(path)
            if data not in seen and cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None:
                seen.add(data)
                images.append((path.name, data))
    originals = list(images)
    for name, data in originals[: max(count - len(images), 0)]:
        ok, png = cv2.imencode(".png", cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
        images.append((f"{Path(name).stem}-reencoded.png", png.tobytes()))
    if len(images) < count:
        raise SystemExit(f"only {len(images)} distinct images under {DATA}; asked for {count}")
    return images[:count]


def count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--per-sample", type=int, default=100)
    parser.add_argument("--senders", type=int, default=4, help="threads POSTing samples at once")
    parser.add_argument("--workers", type=int, default=1, help="Celery worker processes")
    parser.add_argument("--model", type=Path, default=PROJECT / "models" / "default")
    args = parser.parse_args()

    images = distinct_images(args.images)
    samples = [images[k : k + args.per_sample] for k in range(0, len(images), args.per_sample)]
    ids = [f"LOAD-{k:05d}" for k in range(len(samples))]
    errors: list[str] = []
    post_s: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-load-") as home,
        LocalStack(Path(home), args.model, workers=args.workers, api=True) as local,
    ):
        settings = local.settings
        with db.session_scope(settings.database_url) as session:
            token = create_client(session, name="load", scopes=["submit", "read"], webhook_url=None, actor="bench").token
        client = HttpClient(f"http://{settings.api_host}:{settings.api_port}", token, timeout=600)

        def send(k: int) -> None:
            start = time.perf_counter()
            try:
                client.submit(ids[k], samples[k], idempotency_key=f"load-{k}")
            except (HttpApiError, httpx.HTTPError) as exc:
                errors.append(f"{ids[k]}: {exc}")
            post_s.append(time.perf_counter() - start)

        start = time.perf_counter()
        with ThreadPoolExecutor(args.senders) as pool:
            list(tqdm(pool.map(send, range(len(samples))), total=len(samples), desc="POST", unit="sample"))
        posted = time.perf_counter() - start
        statuses = {}
        with tqdm(total=len(ids), desc="classified", unit="sample") as progress:
            pending = list(ids)
            while pending:
                still = []
                for accession_id in pending:
                    status = client.report(accession_id).status
                    if status in ("queued", "running"):
                        still.append(accession_id)
                    else:
                        statuses[accession_id] = status
                progress.update(len(pending) - len(still))
                pending = still
                if pending:
                    time.sleep(0.5)
        elapsed = time.perf_counter() - start
        with db.session_scope(settings.database_url) as session:
            counts = {
                "samples": count(session, tables.Sample),
                "cells": count(session, tables.SampleImage),
                "images": count(session, tables.Image),
                "predictions": count(session, tables.Prediction),
                "failed_cells": session.scalar(
                    select(func.count()).select_from(tables.SampleImage).where(tables.SampleImage.status == "failed")
                ),
            }
    expected = {"samples": len(samples), "cells": len(images), "images": len(images), "predictions": len(images), "failed_cells": 0}
    print(
        json.dumps(
            {
                "images": len(images),
                "samples": len(samples),
                "senders": args.senders,
                "workers": args.workers,
                "model": str(args.model),
                "cpu_count": os.cpu_count(),
                "seconds_all_posted": round(posted, 1),
                "seconds_all_classified": round(elapsed, 1),
                "images_per_s": round(len(images) / elapsed, 1),
                "post_seconds": {"p50": round(statistics.median(post_s), 3), "p99": round(percentile(post_s, 99), 3)},
                "statuses": {s: list(statuses.values()).count(s) for s in sorted(set(statuses.values()))},
                "database": counts,
                "database_matches_submitted": counts == expected,
                "http_errors": errors,
            },
            indent=2,
        )
    )
    if counts != expected or errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
