"""How fast a worker recovers when its pool process is SIGKILLed mid-sample, again and again; prints JSON.

    python bench/bench_recovery.py [--images 850] [--kills 5] [--model DIR]

Starts `bloodcell up`'s local stack (redis-server, SQLite, file image store, one Celery worker; no Flower, no
API) in a temporary BLOODCELL_HOME, submits one sample of IMAGES distinct real kaggle5 images and, each time
the sample has gained predictions since the last kill, SIGKILLs the worker's pool process (the process that
holds the model: the OOM killer's usual victim). For each kill it reports the seconds until the replacement
pool process exists and until the next cell of the sample is classified (a new prediction row committed).
Target: under 15 s from each kill to the next classified cell, with no "Timed out waiting for UP message"
(Celery killing a replacement that was slow to start) in the worker's log.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import tempfile
import time
from pathlib import Path

from bench_queue import PROJECT, LocalStack, children, load_images, wait_final
from sqlalchemy import func, select

from bloodcell_core.service.db import session_scope
from bloodcell_core.service.tables import Prediction, Sample, SampleImage

TARGET_S = 15.0
UP_TIMEOUT = "Timed out waiting for UP message"


def classified(stack: LocalStack, accession_id: str) -> int:
    """Predictions of the sample's cells committed so far."""
    with session_scope(stack.settings.database_url) as session:
        return session.scalar(
            select(func.count())
            .select_from(Prediction)
            .join(SampleImage, SampleImage.image_sha256 == Prediction.image_sha256)
            .join(Sample, Sample.id == SampleImage.sample_id)
            .where(Sample.accession_id == accession_id)
        )


def wait_until(condition, timeout: float, what: str, poll: float = 0.02) -> float:
    """Seconds until CONDITION() holds; SystemExit after TIMEOUT."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(poll)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=850, help="cells in the sample (enough to outlast the kills)")
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs of the pool process during the sample")
    parser.add_argument("--model", type=Path, default=PROJECT / "models" / "default", help="the production model")
    args = parser.parse_args()

    images = load_images(args.images)
    with tempfile.TemporaryDirectory(prefix="bloodcell-bench-recovery-") as home:
        with LocalStack(Path(home), args.model, workers=1) as stack:
            (worker,) = stack.worker_pids()
            stack.client.submit("RECOVERY-1", images)
            rows, kept = [], 0
            for _ in range(args.kills):
                wait_until(lambda: classified(stack, "RECOVERY-1") > kept, 120, "a classified cell after the last kill")
                (victim,) = children(worker)
                os.kill(victim, signal.SIGKILL)
                killed_at = time.monotonic()
                time.sleep(0.2)  # a commit the process had sent still lands
                kept = classified(stack, "RECOVERY-1")
                replaced = wait_until(lambda: [p for p in children(worker) if p != victim], 60, "a replacement process")
                wait_until(lambda: classified(stack, "RECOVERY-1") > kept, 120, "a classified cell after the kill")
                rows.append(
                    {
                        "cells_classified_at_kill": kept,
                        "replacement_process_s": round(replaced + 0.2, 2),
                        "kill_to_next_classified_cell_s": round(time.monotonic() - killed_at, 2),
                    }
                )
            wait_final(stack.settings, ["RECOVERY-1"])
            report = stack.client.report("RECOVERY-1")
            log = (stack.settings.home / "log" / "worker1.log").read_text(errors="replace")
    recovery = [row["kill_to_next_classified_cell_s"] for row in rows]
    print(
        json.dumps(
            {
                "benchmark": "worker recovery after SIGKILL of the pool process",
                "images": args.images,
                "kills": rows,
                "kill_to_next_classified_cell_s": {"median": statistics.median(recovery), "max": max(recovery)},
                "target_s": TARGET_S,
                "meets_target": max(recovery) < TARGET_S,
                "model_load_s_per_pool_process": [float(s) for s in re.findall(r"model \S+ loaded in ([\d.]+) s", log)],
                "up_message_timeouts_in_log": log.count(UP_TIMEOUT),
                "pool_processes_killed_in_log": log.count("exited with 'signal 9 (SIGKILL)'"),
                "sample_status": report.status,
                "cells_classified": report.n_classified,
                "every_cell_classified": report.n_classified == args.images and report.n_failed == 0,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
