"""`ttm-batch`: run many jobs of one API-format workflow on one or more ComfyUI servers.

    ttm-batch --server http://127.0.0.1:8188 [--server URL2 ...] \\
              --workflow workflows/ttm_warp_paths_api.json --jobs jobs.jsonl --out renders/

Every job ends in the manifest (``DIR/manifest.jsonl``) with its files or its error. Jobs
are validated against the workflow and the server's /object_info before anything is
queued; each server runs at most ``--per-server`` jobs at once; a server that stops
answering has its jobs re-queued on the others; ``--retries`` re-runs jobs that failed;
``--resume`` skips jobs the manifest already has as done; Ctrl-C interrupts our running
prompts, deletes our queued ones and flushes the manifest. See ttm_batch.jobs for the
jobs-file format and ttm_batch.runner for the runner.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .client import ComfyClient, ComfyError
from .jobs import JobError, read_jobs, validate_jobs
from .runner import MANIFEST, BatchRunner, Manifest, Outcome

LOG = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ttm-batch", description=__doc__.split("\n\n")[1].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", action="append", required=True, help="ComfyUI URL (repeat for several)")
    parser.add_argument("--workflow", type=Path, required=True, help="API-format workflow JSON")
    parser.add_argument("--jobs", type=Path, required=True, help="jobs file (.jsonl or .csv)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (files + manifest.jsonl)")
    parser.add_argument("--per-server", type=int, default=2, help="jobs in flight per server (default 2)")
    parser.add_argument("--retries", type=int, default=0, help="re-run a failed job up to N times")
    parser.add_argument("--resume", action="store_true", help="skip jobs the manifest has as done")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one job may take")
    parser.add_argument("--progress", choices=("auto", "on", "off"), default="auto", help="progress bars")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[ttm-batch] %(message)s", stream=sys.stderr)

    try:
        workflow = json.loads(options.workflow.read_text())
        raws = read_jobs(options.jobs)
    except (OSError, json.JSONDecodeError) as err:
        LOG.error("cannot read the workflow or jobs file: %s", err)
        return 2
    except JobError as err:
        LOG.error("%s", err)
        return 2
    if not isinstance(workflow, dict) or not all(isinstance(n, dict) and "class_type" in n for n in workflow.values()):
        LOG.error("%s is not an API-format workflow (export it with 'Save (API)')", options.workflow)
        return 2
    manifest = Manifest(options.out / MANIFEST)
    if manifest.entries() and not options.resume:
        LOG.error("%s already has a manifest; use --resume to continue it, or another --out", options.out)
        return 2
    object_info = None
    for url in options.server:
        try:
            object_info = ComfyClient(url, timeout=30).object_info()
            break
        except ComfyError as err:
            LOG.warning("%s", err)
    if object_info is None:
        LOG.error("no server answered: %s", ", ".join(options.server))
        return 2
    try:
        jobs, errors = validate_jobs(raws, workflow, object_info, options.jobs.parent)
    except JobError as err:
        LOG.error("%s", err)
        return 2
    options.out.mkdir(parents=True, exist_ok=True)
    for error in errors:
        job_id = next((str(r.fields.get("id", f"line-{r.line}")) for r in raws if r.line == error.line), "?")
        manifest.append(Outcome(job_id, error.line, "failed", error=str(error)))
        LOG.warning("%s", error)
    done = manifest.done() if options.resume else {}
    todo = [job for job in jobs if job.id not in done]
    if done:
        LOG.info("resuming: %d jobs already done, %d to run", len(jobs) - len(todo), len(todo))
    progress = options.progress == "on" or (options.progress == "auto" and sys.stderr.isatty())
    runner = BatchRunner(options.server, workflow, todo, options.out, options.per_server, options.retries,
                         options.timeout, progress)
    try:
        if progress:
            from tqdm.contrib.logging import logging_redirect_tqdm

            with logging_redirect_tqdm():  # log lines above the bars, not through them
                outcomes = runner.run()
        else:
            outcomes = runner.run()
    except KeyboardInterrupt:
        LOG.warning("cancelled; the manifest has every finished job (%s)", manifest.path)
        return 130
    done_now = sum(o.status == "done" for o in outcomes)
    failed = len(outcomes) - done_now + len(errors)
    LOG.info("%d done, %d skipped as already done, %d failed; manifest: %s", done_now, len(jobs) - len(todo), failed,
             manifest.path)
    return 1 if failed else 0
