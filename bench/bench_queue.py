"""Queued service against the in-process pipeline, same model, same machine, same run; prints JSON.

    python bench/bench_queue.py [--images 512] [--rounds 3] [--singles 40] [--scaling-samples 8] [--model DIR] [--runtime openvino]

Starts its own local stack (`bloodcell up` pieces: redis-server, SQLite, file image store, Celery
workers) in a temporary BLOODCELL_HOME, and measures:

- throughput: one sample of N real kaggle5 images, from the start of `Client.submit` (hashing,
  storing, queueing) until its report is persisted, against ``Classifier.classify`` on the same
  bytes in this process (decode, preprocess, batch-64 predict); the two alternate for ROUNDS rounds
  and the ratio of their medians is reported (and each round's);
- single-image latency, submit -> prediction persisted (``Client.classify_image``), p50/p99, against
  ``Classifier.classify_one`` in process (the two alternate, image by image);
- worker memory: resident set of the worker's pool process (the one holding the model) and of the
  whole worker (main process + pool process), and the whole worker's proportional set size (its physical
  memory: shared pages counted once);
- scaling: S samples of N/S images submitted at once, with 1 and with 2 worker processes.

Every measurement uses images the service has not seen before (predictions are stored per image and
model, so a repeated image is not classified again), after a warm-up sample. Compare ratios: the
machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from sqlalchemy import select  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))  # the workers package, for a run from a source checkout

from bloodcell_core.cli import stack  # noqa: E402
from bloodcell_core.config import Settings  # noqa: E402
from bloodcell_core.ml.dataset import list_class_files, read_image_file  # noqa: E402
from bloodcell_core.ml.inference import Classifier  # noqa: E402
from bloodcell_core.service.db import session_scope  # noqa: E402
from bloodcell_core.service.states import FINAL_SAMPLE_STATUSES  # noqa: E402
from bloodcell_core.service.tables import Sample  # noqa: E402

DATA = PROJECT.parent / "shared" / "data" / "kaggle5"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_images(count: int) -> list[tuple[str, bytes]]:
    """COUNT distinct real images (distinct bytes), in a fixed random order."""
    files = list_class_files(DATA)
    order = np.random.default_rng(0).permutation(len(files))
    images, seen = [], set()
    for k in order:
        data = read_image_file(files[k][1])
        if data not in seen:
            seen.add(data)
            images.append((files[k][1].name, data))
        if len(images) == count:
            break
    if len(images) < count:
        raise SystemExit(f"{DATA} has only {len(images)} distinct images; asked for {count}")
    return images


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def wait_final(settings: Settings, accession_ids: list[str], timeout: float = 600, poll: float = 0.025) -> None:
    """Wait until every sample's status is final, which is committed with its report and predictions.

    A one-column query per poll: building whole reports 40 times a second would take CPU from the worker.
    """
    deadline = time.monotonic() + timeout
    pending = set(accession_ids)
    while pending:
        with session_scope(settings.database_url) as session:
            rows = session.execute(select(Sample.accession_id, Sample.status).where(Sample.accession_id.in_(pending)))
            pending -= {accession_id for accession_id, status in rows if status in FINAL_SAMPLE_STATUSES}
        if time.monotonic() > deadline:
            raise TimeoutError(f"samples not classified after {timeout} s: {sorted(pending)}")
        if pending:
            time.sleep(poll)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pss_mib(pid: int) -> float:
    """Proportional set size: pages shared between processes (the main process's libraries, inherited by the
    forked pool) split between them, so the figures of a worker's processes add up to its physical memory."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(c) for c in text]
    return found


class LocalStack:
    """`bloodcell up` without Flower (and without the HTTP API unless asked), in a temporary home, with N workers."""

    def __init__(self, home: Path, model: Path, workers: int, api: bool = False) -> None:
        env = {
            "BLOODCELL_HOME": str(home),
            "BLOODCELL_REDIS_PORT": str(free_port()),
            "BLOODCELL_API_PORT": str(free_port()),
            "BLOODCELL_DEFAULT_MODEL": str(model),
        }
        self.patch = mock.patch.dict(os.environ, env)
        self.patch.start()
        self.settings = Settings.from_env()
        self.workers, self.api = workers, api

    def __enter__(self) -> "LocalStack":
        try:
            stack.up(self.settings, workers=self.workers, flower=False, api=self.api)
        except BaseException:  # stop what did start, and the environment patch
            self.__exit__()
            raise
        from bloodcell_core.clients.local import Client

        self.client = Client(self.settings)
        return self

    def __exit__(self, *_) -> None:
        stack.down(self.settings)
        self.patch.stop()

    def worker_pids(self) -> list[int]:
        run = self.settings.home / "run"
        return [int((run / f"worker{k}.pid").read_text()) for k in range(1, self.workers + 1)]

    def run_samples(self, prefix: str, samples: list[list[tuple[str, bytes]]]) -> float:
        """Submit every sample, wait for every report; seconds from the first submit to the last report."""
        start = time.perf_counter()
        ids = [f"{prefix}-{k}" for k in range(len(samples))]
        for accession_id, images in zip(ids, samples):
            self.client.submit(accession_id, images)
        wait_final(self.settings, ids)
        elapsed = time.perf_counter() - start
        for accession_id, images in zip(ids, samples):
            report = self.client.report(accession_id)
            assert report.n_classified == len(images), report  # every result persisted
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512, help="images in the throughput sample")
    parser.add_argument("--singles", type=int, default=40, help="single images for the latency figures")
    parser.add_argument("--scaling-samples", type=int, default=8, help="samples (of images/S each) for scaling")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (medians are reported)")
    parser.add_argument("--model", type=Path, default=PROJECT / "models" / "default")
    parser.add_argument("--runtime", default="keras", help="inference runtime of the workers and of the in-process pipeline")
    args = parser.parse_args()
    os.environ["BLOODCELL_RUNTIME"] = args.runtime  # the workers' (they inherit the environment)

    n, singles, s, rounds = args.images, args.singles, args.scaling_samples, args.rounds
    per_sample = n // s
    # warm-up, throughput rounds, latency, scaling with 1 and 2 workers: all distinct images
    images = load_images(64 + rounds * n + singles + 2 * (64 + s * per_sample))
    take = iter(range(len(images)))

    def batch(count: int) -> list[tuple[str, bytes]]:
        return [images[next(take)] for _ in range(count)]

    warm, round_sets, single_set = batch(64), [batch(n) for _ in range(rounds)], batch(singles)
    scaling_sets = {w: (batch(64), [batch(per_sample) for _ in range(s)]) for w in (1, 2)}

    classifier = Classifier.from_dir(args.model, runtime=args.runtime)
    classifier.classify(warm)
    result: dict = {
        "runtime": classifier.runtime,
        "model": str(args.model),
        "images": n,
        "rounds": rounds,
        "batch_size": 64,
        "cpu_count": os.cpu_count(),
    }
    in_process_s, queue_s = [], []
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as home, LocalStack(Path(home), args.model, workers=1) as local:
        local.run_samples("WARM", [warm])
        for k, round_set in enumerate(round_sets):  # alternate, so both see the same machine load
            start = time.perf_counter()
            in_process = classifier.classify(round_set)
            in_process_s.append(time.perf_counter() - start)
            assert all(r.error is None for r in in_process)
            queue_s.append(local.run_samples(f"THROUGHPUT-{k}", [round_set]))
        single_ms, queued_ms = [], []
        for _, data in single_set:
            start = time.perf_counter()
            classifier.classify_one(data)
            single_ms.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            answer = local.client.classify_image(data)
            queued_ms.append((time.perf_counter() - start) * 1000)
            assert "label" in answer, answer
        pid = local.worker_pids()[0]
        pool = children(pid)
        result["worker_memory_mib"] = {
            "pool_process_with_model": round(sum(rss_mib(p) for p in pool), 1),
            "whole_worker": round(rss_mib(pid) + sum(rss_mib(p) for p in pool), 1),
            "whole_worker_proportional": round(pss_mib(pid) + sum(pss_mib(p) for p in pool), 1),
        }
    in_process_median, queue_median = statistics.median(in_process_s), statistics.median(queue_s)
    result["throughput"] = {
        "in_process_images_per_s": round(n / in_process_median, 1),
        "queue_images_per_s": round(n / queue_median, 1),
        "ratio": round(in_process_median / queue_median, 3),
        "ratio_per_round": [round(a / b, 3) for a, b in zip(in_process_s, queue_s)],
        "goal_ratio": 0.9,  # issue 19: the queue keeps at least 0.9 of the in-process pipeline
    }
    result["single_image_ms"] = {
        "in_process": {"p50": round(statistics.median(single_ms), 2), "p99": round(percentile(single_ms, 99), 2)},
        "queue": {"p50": round(statistics.median(queued_ms), 2), "p99": round(percentile(queued_ms, 99), 2)},
    }

    scaling = {}
    for workers, (warm_up, samples) in scaling_sets.items():
        with tempfile.TemporaryDirectory(prefix="bench-queue-") as home, LocalStack(Path(home), args.model, workers=workers) as local:
            local.run_samples("WARM", [warm_up[: len(warm_up) // 2], warm_up[len(warm_up) // 2 :]])
            elapsed = local.run_samples("SCALE", samples)
        scaling[f"{workers}_worker{'s' if workers > 1 else ''}"] = round(s * per_sample / elapsed, 1)
    scaling["ratio_2_to_1"] = round(scaling["2_workers"] / scaling["1_worker"], 3)
    result["scaling_images_per_s"] = {"samples": s, "images_per_sample": per_sample, **scaling}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
