"""The batch runner: spread validated jobs over ComfyUI servers and record each in the manifest.

Every job ends in the manifest (``DIR/manifest.jsonl``) with its files or its error. Each
server runs at most ``per_server`` jobs at once; a server that stops answering has its jobs
re-queued on the others; ``retries`` re-runs jobs that failed inside a node; cancel() (the
CLI's Ctrl-C) interrupts our running prompts, deletes our queued ones and records the
cancelled jobs. The command line is ttm_batch.cli; the jobs-file format is ttm_batch.jobs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .client import ComfyClient, ComfyError, ComfyUnreachable
from .jobs import Job, apply_job, server_name

LOG = logging.getLogger(__name__)
MANIFEST = "manifest.jsonl"


@dataclass
class Outcome:
    """One manifest entry: how a job ended."""

    job: str
    line: int
    status: str  # done | failed | cancelled
    server: str | None = None
    prompt_id: str | None = None
    files: list[str] = field(default_factory=list)
    attempts: int = 0  # 0: never started (a refused jobs-file line, or cancelled / no server before it ran)
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    seconds: float | None = None
    run: str | None = None


class Manifest:
    """Append-only JSONL of outcomes; flushed and fsynced per entry so a crash loses nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def done(self) -> dict[str, dict[str, Any]]:
        """Per job id, its latest entry that ran, if that is 'done' and its files are all still there.

        Entries that never started (attempts 0) are skipped: they cannot have changed the job's
        files, and a refused jobs-file line is recorded under the id it claimed, which may be
        another line's job (a reused id) whose render must not be shadowed and run again.
        """
        latest: dict[str, dict[str, Any]] = {}
        for entry in self.entries():
            if entry.get("attempts", 0) > 0:
                latest[entry["job"]] = entry
        root = self.path.parent
        return {job: e for job, e in latest.items()
                if e["status"] == "done" and all((root / f).is_file() for f in e["files"])}

    def append(self, outcome: Outcome) -> None:
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(outcome)) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


class _ServerLost(Exception):
    pass


class _Cancelled(Exception):
    pass


class _JobFailed(Exception):
    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass
class _Task:
    job: Job
    attempt: int = 1


@dataclass
class _Server:
    url: str
    alive: bool = True
    running: dict[str, str] = field(default_factory=dict)  # prompt id -> job id


class _Bars:
    """One tqdm bar overall and one per worker slot (no-ops when disabled)."""

    def __init__(self, total: int, slots: int, enabled: bool) -> None:
        self.enabled = enabled
        self._lock = threading.Lock()
        if not enabled:
            return
        from tqdm import tqdm

        self.overall = tqdm(total=total, desc="jobs", position=0, unit="job", dynamic_ncols=True)
        self.slots = [tqdm(total=1, desc=f"slot {i + 1}: idle", position=i + 1, leave=False, dynamic_ncols=True,
                           bar_format="{desc} {bar} {n_fmt}/{total_fmt}") for i in range(slots)]

    def job(self, slot: int, text: str, value: int = 0, total: int = 1) -> None:
        if self.enabled:
            with self._lock:
                bar = self.slots[slot]
                bar.set_description_str(text, refresh=False)
                bar.total, bar.n = max(total, 1), value
                bar.refresh()

    def finished(self) -> None:
        if self.enabled:
            with self._lock:
                self.overall.update(1)

    def close(self) -> None:
        if self.enabled:
            for bar in [*self.slots, self.overall]:
                bar.close()


class BatchRunner:
    """Runs validated jobs over servers; see the module docstring for the guarantees."""

    def __init__(self, servers: Sequence[str], workflow: dict[str, Any], jobs: Sequence[Job], out_dir: Path,
                 per_server: int = 2, retries: int = 0, timeout: float = 3600.0, progress: bool = False) -> None:
        if per_server < 1:
            raise ValueError("per_server must be at least 1")
        self.servers = [_Server(url.rstrip("/")) for url in servers]
        self.workflow = workflow
        self.jobs = list(jobs)
        self.out_dir = out_dir
        self.per_server = per_server
        self.retries = retries
        self.timeout = timeout
        self.run_token = uuid.uuid4().hex[:8]
        self.manifest = Manifest(out_dir / MANIFEST)
        self._tasks: queue.Queue[_Task] = queue.Queue()
        self._outcomes: dict[str, Outcome] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._bars = _Bars(len(self.jobs), len(self.servers) * per_server, progress)

    # ------------------------------------------------------------------ bookkeeping
    def _record(self, outcome: Outcome) -> None:
        outcome.run = self.run_token
        with self._lock:
            if outcome.job in self._outcomes:  # never twice (a late duplicate is dropped)
                return
            self._outcomes[outcome.job] = outcome
        self.manifest.append(outcome)
        self._bars.finished()
        log = LOG.info if outcome.status == "done" else LOG.warning
        log("%s %s on %s%s", outcome.job, outcome.status, outcome.server or "-",
            f": {outcome.error}" if outcome.error else f" ({len(outcome.files)} files)")

    def _all_recorded(self) -> bool:
        with self._lock:
            return len(self._outcomes) >= len(self.jobs)

    # ------------------------------------------------------------------ one job
    def _run_task(self, server: _Server, client: ComfyClient, task: _Task, slot: int) -> Outcome:
        job = task.job
        started = time.time()
        self._bars.job(slot, f"{job.id} @ {server.url}: uploading")
        try:
            uploaded = {}
            for _, _, path in job.files:
                if path not in uploaded:
                    data = path.read_bytes()
                    uploaded[path] = client.upload_image(data, self._upload_name(job, path, data))
            # The id names the local folder only; on the server it is an ASCII name (see server_name).
            prompt = apply_job(self.workflow, job, uploaded,
                               f"ttm-batch/{self.run_token}/{server_name(job.id)}_a{task.attempt}")
            with client.socket(timeout=1.0) as socket:
                # The id is ours and registered before the POST: a Ctrl-C while it is in flight
                # (cancel() reads server.running) still deletes the prompt if it lands.
                prompt_id = uuid.uuid4().hex
                with self._lock:
                    if self._stop.is_set():
                        raise _Cancelled
                    server.running[prompt_id] = job.id
                try:
                    try:
                        client.queue(prompt, prompt_id)
                    except ComfyUnreachable:
                        raise
                    except ComfyError as err:  # node_errors / HTTP 400: the job itself is wrong
                        _withdraw(client, [prompt_id])  # with node_errors ComfyUI still runs the valid part
                        raise _JobFailed(str(err), retryable=False) from None
                    self._follow(socket, client, prompt_id, job, server, slot, started)
                except _Cancelled:
                    # cancel() may have run before this prompt reached the queue: withdraw it here too.
                    _withdraw(client, [prompt_id])
                    raise
                finally:
                    with self._lock:
                        server.running.pop(prompt_id, None)
            files = self._collect(client, prompt_id, job)
        except ComfyUnreachable as err:
            if self._stop.is_set():
                raise _Cancelled from None
            if _answers(server.url):
                raise _JobFailed(str(err)) from None
            raise _ServerLost(str(err)) from None
        finished = time.time()
        return Outcome(job.id, job.line, "done", server.url, prompt_id, files, task.attempt,
                       started_at=started, finished_at=finished, seconds=round(finished - started, 3))

    def _upload_name(self, job: Job, path: Path, data: bytes) -> str:
        """An ASCII input-folder name, unique per content: two files of one job with the same name
        (shots/a.png, masks/a.png) must not overwrite each other, and uploads overwrite."""
        digest = hashlib.sha256(data).hexdigest()[:12]
        suffix = path.suffix.lower() if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", path.suffix) else ""
        return f"ttmb_{self.run_token}_{server_name(job.id)}_{server_name(path.stem, 40)}_{digest}{suffix}"

    def _follow(self, socket, client: ComfyClient, prompt_id: str, job: Job, server: _Server, slot: int,
                started: float) -> None:
        node = ""
        while True:
            if self._stop.is_set():
                raise _Cancelled
            if time.time() - started > self.timeout:
                client.interrupt(prompt_id)
                raise _JobFailed(f"no result within {self.timeout:.0f} s (interrupted)")
            message = socket.receive()
            if message is None:
                continue
            data = message.get("data", {}) if isinstance(message.get("data"), dict) else {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            kind = message.get("type")
            if kind == "executing" and data.get("node"):
                node = _node_title(self.workflow, data["node"])
                self._bars.job(slot, f"{job.id} @ {server.url}: {node}")
            elif kind == "progress":
                self._bars.job(slot, f"{job.id} @ {server.url}: {node}", data.get("value", 0), data.get("max", 1))
            elif kind == "execution_success":
                return
            elif kind == "execution_error":
                raise _JobFailed(f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                                 f"{data.get('exception_message', '').strip()}")
            elif kind == "execution_interrupted":
                if self._stop.is_set():
                    raise _Cancelled
                raise _JobFailed("interrupted on the server")

    def _collect(self, client: ComfyClient, prompt_id: str, job: Job) -> list[str]:
        # ComfyUI sends execution_success before it files the prompt in /history: wait for the entry.
        try:
            result = client.wait(prompt_id, timeout=120)
        except ComfyUnreachable:
            raise
        except ComfyError as err:
            raise _JobFailed(f"finished, but its outputs could not be read: {err}") from None
        outputs = [f for f in result.files() if f.type == "output"]
        folder = self.out_dir / job.id
        if folder.exists():  # an earlier attempt's files: replace, never duplicate
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        files = []
        for output in outputs:
            target = folder / output.filename
            temp = target.with_name(f".{target.name}.part")
            temp.write_bytes(client.view(output))
            os.replace(temp, target)
            files.append(str(target.relative_to(self.out_dir)))
        return files

    # ------------------------------------------------------------------ workers
    def _worker(self, server: _Server, slot: int) -> None:
        client = ComfyClient(server.url, timeout=60)
        while not self._stop.is_set() and not self._all_recorded():
            try:
                task = self._tasks.get(timeout=0.2)
            except queue.Empty:
                continue
            if not server.alive:
                self._tasks.put(task)
                return
            try:
                outcome = self._run_task(server, client, task, slot)
            except _ServerLost as err:
                server.alive = False
                LOG.warning("server %s stopped answering (%s); re-queueing %s elsewhere", server.url, err, task.job.id)
                self._tasks.put(task)
                return
            except _Cancelled:
                self._record(Outcome(task.job.id, task.job.line, "cancelled", server.url, attempts=task.attempt,
                                     error="cancelled by the user"))
                return
            except _JobFailed as err:
                if err.retryable and task.attempt <= self.retries:
                    LOG.warning("%s failed on %s (%s); retry %d of %d", task.job.id, server.url, err, task.attempt,
                                self.retries)
                    self._tasks.put(_Task(task.job, task.attempt + 1))
                    continue
                outcome = Outcome(task.job.id, task.job.line, "failed", server.url, attempts=task.attempt,
                                  error=str(err))
            except Exception as err:  # a bug must end this job, not hang the whole run
                LOG.exception("%s: unexpected error", task.job.id)
                outcome = Outcome(task.job.id, task.job.line, "failed", server.url, attempts=task.attempt,
                                  error=f"internal error: {err!r}")
            finally:
                self._bars.job(slot, f"slot {slot + 1}: idle")
            self._record(outcome)

    def run(self) -> list[Outcome]:
        """Run every job; returns the outcomes in job order. KeyboardInterrupt cancels cleanly."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for job in self.jobs:
            self._tasks.put(_Task(job))
        threads = [threading.Thread(target=self._worker, args=(server, i * self.per_server + k), daemon=True,
                                    name=f"ttm-batch-{i}-{k}")
                   for i, server in enumerate(self.servers) for k in range(self.per_server)]
        for thread in threads:
            thread.start()
        try:
            while not self._all_recorded():
                if not any(t.is_alive() for t in threads):
                    self._fail_remaining("no server is answering any more" if not any(s.alive for s in self.servers)
                                         else "every worker stopped")
                    break
                time.sleep(0.1)
        except KeyboardInterrupt:
            LOG.warning("cancelling: interrupting our running prompts and deleting our queued ones")
            self.cancel()
            for thread in threads:
                thread.join(timeout=30)
            self._fail_remaining("cancelled by the user", status="cancelled")
            raise
        finally:
            self._bars.close()
        for thread in threads:
            thread.join(timeout=5)
        return [self._outcomes[j.id] for j in self.jobs if j.id in self._outcomes]

    def cancel(self) -> None:
        self._stop.set()
        for server in self.servers:
            with self._lock:
                prompt_ids = list(server.running)
            if not prompt_ids or not server.alive:
                continue
            _withdraw(ComfyClient(server.url, timeout=10), prompt_ids)

    def _fail_remaining(self, reason: str, status: str = "failed") -> None:
        for job in self.jobs:
            with self._lock:
                known = job.id in self._outcomes
            if not known:
                self._record(Outcome(job.id, job.line, status, error=reason))


def _node_title(workflow: dict[str, Any], node_id: str) -> str:
    node = workflow.get(str(node_id), {})
    return node.get("_meta", {}).get("title") or node.get("class_type", str(node_id))


def _withdraw(client: ComfyClient, prompt_ids: list[str]) -> None:
    """Delete our prompts from the server's queue and interrupt whichever of them runs (both idempotent)."""
    try:
        client.delete_queued(prompt_ids)
        for prompt_id in prompt_ids:
            client.interrupt(prompt_id)
    except ComfyError as err:
        LOG.warning("could not cancel on %s: %s", client.base_url, err)


def _answers(url: str) -> bool:
    try:
        ComfyClient(url, timeout=5).object_info()
        return True
    except ComfyError:
        return False
