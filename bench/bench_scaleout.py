"""Queue throughput with 1, 2 and 4 worker processes against one Redis and one PostgreSQL, the share of the
workers' time spent outside their own preprocessing and model, and the submissions one API process takes; prints JSON.

    python bench/bench_scaleout.py [--workers 1,2,4] [--samples 8] [--images-per-sample 16] [--submit-seconds 10]

For each worker count W: a local stack (bench_queue.LocalStack: redis-server, W `bloodcell worker`
processes of concurrency 1, the HTTP API) on a fresh PostgreSQL database (tests/servers.py) with the
database image store (what workers on several machines share). After a warm-up sample per worker (each
loads the model), SAMPLES samples of IMAGES_PER_SAMPLE distinct real kaggle5 images are submitted at once
and timed to their last report:

- ``images_per_s``: throughput;
- ``model_share``: the sum of each image's preprocessing and model time (``predictions.preprocess_ms +
  predict_ms``, measured by the workers) over W x the elapsed time; ``outside_model_share`` = 1 - that: an
  upper bound of the time the workers wait on Redis and PostgreSQL (it also holds fetching the image bytes,
  writing predictions and reports, Celery's own work, and idle time once the queue is empty).

Then ``api``: for SUBMIT_SECONDS, one client, then 4 client threads, POST /v1/samples samples of
IMAGES_PER_SAMPLE images already classified (new accession ids each time, so the workers only write
reports) to the one API process: samples and images per second. On a 2-core machine shared with other
work the workers, the API, Redis and PostgreSQL all share the same two cores: read the ratios, not the
absolute figures, and keep the runs small.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT / "tests"))  # the servers the tests start

import httpx  # noqa: E402
from bench_queue import LocalStack, load_images, wait_final  # noqa: E402
from servers import PostgresServer  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from bloodcell_core.service import db  # noqa: E402
from bloodcell_core.service.api_clients import create_client  # noqa: E402
from bloodcell_core.service.tables import Prediction, Sample, SampleImage  # noqa: E402


def model_seconds(stack: LocalStack, accession_ids: list[str]) -> float:
    """Seconds of preprocessing and model the workers measured for these samples' images."""
    with db.session_scope(stack.settings.database_url) as session:
        total = session.scalar(
            select(func.sum(Prediction.preprocess_ms + Prediction.predict_ms))
            .join(SampleImage, SampleImage.image_sha256 == Prediction.image_sha256)
            .join(Sample, Sample.id == SampleImage.sample_id)
            .where(Sample.accession_id.in_(accession_ids))
        )
    return float(total or 0) / 1000


def submissions(base: str, token: str, images: list[tuple[str, bytes]], seconds: float, threads: int) -> dict[str, float]:
    """POST /v1/samples as fast as THREADS clients can for SECONDS; samples and images per second."""
    done = [0] * threads
    deadline = time.monotonic() + seconds

    def client(k: int) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            while done[k] == 0 or time.monotonic() < deadline:  # at least one each, however late the thread starts
                files = [("images", (name, data, "image/jpeg")) for name, data in images]
                answer = http.post("/v1/samples", data={"accession_id": f"API-{threads}-{k}-{done[k]}"}, files=files)
                assert answer.status_code == 202, answer.text[:300]
                done[k] += 1

    start = time.monotonic()
    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.monotonic() - start
    return {"samples_per_s": round(sum(done) / elapsed, 3), "images_per_s": round(sum(done) * len(images) / elapsed, 2)}


def run(workers: int, url: str, args: argparse.Namespace, images: list[tuple[str, bytes]]) -> dict[str, object]:
    per = args.images_per_sample
    warm_up, measured = images[: workers * per], images[workers * per :]
    home = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    env = {"BLOODCELL_DATABASE_URL": url, "BLOODCELL_IMAGE_STORE": "database"}
    try:
        with mock.patch.dict(os.environ, env), LocalStack(home, args.model, workers=workers, api=True) as stack:
            stack.run_samples("WARM", [warm_up[k * per : (k + 1) * per] for k in range(workers)])
            samples = [measured[k * per : (k + 1) * per] for k in range(args.samples)]
            ids = [f"RUN-{k}" for k in range(args.samples)]
            start = time.perf_counter()
            for accession_id, sample in zip(ids, samples):
                stack.client.submit(accession_id, sample)
            wait_final(stack.settings, ids)
            elapsed = time.perf_counter() - start
            in_model = model_seconds(stack, ids)
            result: dict[str, object] = {
                "workers": workers,
                "images": args.samples * per,
                "elapsed_s": round(elapsed, 2),
                "images_per_s": round(args.samples * per / elapsed, 2),
                "model_share": round(in_model / (workers * elapsed), 3),
                "outside_model_share": round(1 - in_model / (workers * elapsed), 3),
            }
            if args.submit_seconds > 0 and workers == 1:
                with db.session_scope(url) as session:
                    token = create_client(session, name="bench", scopes=["submit"], webhook_url=None, actor="bench").token
                base = f"http://{stack.settings.api_host}:{stack.settings.api_port}"
                result["api"] = {
                    f"{threads}_client{'s' if threads > 1 else ''}": submissions(
                        base, token, warm_up[:per], args.submit_seconds, threads
                    )
                    for threads in (1, 4)
                }
            return result
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,4", help="worker process counts")
    parser.add_argument("--samples", type=int, default=8, help="samples in each timed run")
    parser.add_argument("--images-per-sample", type=int, default=16)
    parser.add_argument("--submit-seconds", type=float, default=10, help="seconds of API submissions (0: skip)")
    parser.add_argument("--model", type=Path, default=PROJECT / "models" / "default")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    per_run = (max(counts) + args.samples) * args.images_per_sample
    pool = load_images(per_run * len(counts))  # every run classifies images nobody classified before
    postgres = PostgresServer(Path(tempfile.mkdtemp(prefix="bench-scaleout-pg-"))).start()
    results = []
    try:
        for k, workers in enumerate(counts):
            url = postgres.create_database(f"scaleout_{workers}")
            results.append(run(workers, url, args, pool[k * per_run : (k + 1) * per_run]))
            print(json.dumps(results[-1]), file=sys.stderr)
    finally:
        postgres.stop()
        shutil.rmtree(postgres.directory, ignore_errors=True)
    base = results[0]["images_per_s"]
    speedup = {f"{r['workers']}_over_{counts[0]}": round(float(r["images_per_s"]) / float(base), 2) for r in results}  # type: ignore[arg-type]
    print(json.dumps({"cpu_cores": os.cpu_count(), "results": results, "speedup": speedup}, indent=2))


if __name__ == "__main__":
    main()
