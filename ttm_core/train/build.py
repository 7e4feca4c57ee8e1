"""``ttm-data build``'s engine: list the videos, make their clips in parallel, write shards in order.

Inputs (``list_inputs``): a folder of videos (searched recursively), a text file with one video path per
line, or a JSONL file with one ``{"video": ..., "caption": ..., "motion_prompt": ..., "objects":
[{"name": ..., "local_prompt": ...}], "masks": ...}`` per line (paths relative to the list's folder).
Captions come from the JSONL, a ``--captions`` JSONL, or a ``.txt`` beside each video (same stem);
first masks (``objects_from="masks"``) from the JSONL or ``MASKS/<relative path without extension>.png``
(or ``MASKS/<stem>.png``). What is missing is reported for all videos at once, before any work.

Parallelism: ``settings.workers`` local processes (``concurrent.futures.ProcessPoolExecutor``, spawn
context; every process loads the models once), or with ``settings.ray_address`` a Ray Data pipeline
(``ray.data.from_items(...).map_batches`` over an actor pool of ``workers`` actors, ``num_gpus`` each;
``"local"`` starts a local Ray instance). Ray is the distributed engine; nothing here schedules work
across machines. Workers decode, track, filter and encode (mp4 / PNG), the driver only writes tars.

Order and resume: clips are sorted by key; results are taken in that order (a reorder buffer), kept
clips fill shards of ``clips_per_shard`` one after another, and a shard's clips enter the manifest
once it is renamed into place. A rerun skips finished clips, and because the remaining kept clips
follow the same order, an interrupted and resumed build writes the same shards as an uninterrupted
one. The same inputs and settings give byte-identical shards (local processes or Ray alike).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TTMInputError
from ..types import ProgressFn
from .clips import (
    VIDEO_EXTENSIONS,
    ClipInput,
    ClipRecord,
    ClipSkipped,
    DataSettings,
    Models,
    clip_key,
    load_models,
    process_clip,
    settings_from_json,
    settings_json,
)
from .shards import (
    Manifest,
    ManifestEntry,
    encode_sample,
    remove_orphans,
    remove_partials,
    shard_name,
    write_shard,
)

LOG = logging.getLogger(__name__)

BUILD_FILE = "build.json"
__all__ = ["BuildReport", "ClipInput", "DataSettings", "build_dataset", "list_inputs"]


# --------------------------------------------------------------------------- inputs

def _read_jsonl(path: Path, what: str) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise TTMInputError(what, f"{path} line {number} is not JSON ({err.msg})",
                                'write one object per line, e.g. {"video": "a.mp4", "caption": "..."}') from None
        if not isinstance(row, dict) or not isinstance(row.get("video"), str):
            raise TTMInputError(what, f"{path} line {number} has no \"video\" path",
                                'write one object per line, e.g. {"video": "a.mp4", "caption": "..."}')
        rows.append(row)
    return rows


def _objects(value: object, where: str) -> tuple[tuple[str, str], ...]:
    if value in (None, ""):
        return ()
    out = []
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and "name" in item:
                out.append((str(item["name"]), str(item.get("local_prompt", item["name"]))))
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                out.append((str(item[0]), str(item[1])))
            else:
                break
        else:
            return tuple(out)
    raise TTMInputError("objects", f"{where}: objects must be a list of {{\"name\", \"local_prompt\"}}",
                        'write e.g. "objects": [{"name": "dog", "local_prompt": "a dog runs left"}]')


@dataclass(frozen=True)
class _Row:
    video: Path
    relative: str
    caption: str | None = None
    masks: str = ""
    motion_prompt: str = ""
    objects: tuple[tuple[str, str], ...] = ()


def _rows(source: Path) -> list[_Row]:
    if source.is_dir():
        videos = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
        return [_Row(p, p.relative_to(source).as_posix()) for p in videos]
    if not source.is_file():
        raise TTMInputError("input", f"{source} does not exist", "pass a folder of videos, a .txt list or a .jsonl")
    base = source.parent
    if source.suffix.lower() == ".jsonl":
        rows = []
        for row in _read_jsonl(source, "input"):
            video = (base / row["video"]).resolve() if not Path(row["video"]).is_absolute() else Path(row["video"])
            caption = row.get("caption")
            rows.append(_Row(video, row["video"], str(caption) if caption is not None else None,
                             str(base / row["masks"]) if row.get("masks") else "", str(row.get("motion_prompt") or ""),
                             _objects(row.get("objects"), f"{source}: {row['video']}")))
        return rows
    if source.suffix.lower() in VIDEO_EXTENSIONS:
        return [_Row(source, source.name)]
    lines = [ln.strip() for ln in source.read_text(encoding="utf-8").splitlines()]
    return [_Row(base / ln if not Path(ln).is_absolute() else Path(ln), ln) for ln in lines
            if ln and not ln.startswith("#")]


def list_inputs(source: Path | str, settings: DataSettings, captions: Path | str | None = None,
                masks: Path | str | None = None) -> list[ClipInput]:
    """The clips to build, sorted by key; raises TTMInputError (naming the files) when videos are missing
    or lack captions / first masks, before any video is decoded.

    Args:
        source: a folder of videos, a ``.txt`` list of paths, a ``.jsonl`` list or one video file.
        settings: decides whether first masks are needed (``objects_from="masks"``).
        captions: a JSONL of ``{"video", "caption"[, "motion_prompt", "objects"]}`` (video matched by its
            path as written, its resolved path or its file name).
        masks: a folder of first-frame label PNGs (``<relative path without extension>.png`` or ``<stem>.png``).
    """
    source = Path(source)
    rows = _rows(source)
    if not rows:
        raise TTMInputError("input", f"{source} holds no videos ({', '.join(VIDEO_EXTENSIONS)})",
                            "pass a folder with video files or a list of them")
    table: dict[str, dict[str, Any]] = {}
    if captions is not None:
        captions = Path(captions)
        if not captions.is_file():
            raise TTMInputError("captions", f"{captions} does not exist", "pass a JSONL of {\"video\", \"caption\"}")
        for line in _read_jsonl(captions, "captions"):
            for name in (line["video"], str((captions.parent / line["video"]).resolve()), Path(line["video"]).name):
                table.setdefault(name, line)
    missing_video, missing_caption, missing_masks = [], [], []
    clips: dict[str, ClipInput] = {}
    for row in rows:
        if not row.video.is_file():
            missing_video.append(str(row.video))
            continue
        entry = table.get(row.relative) or table.get(str(row.video.resolve())) or table.get(row.video.name) or {}
        caption = row.caption if row.caption is not None else entry.get("caption")
        beside = row.video.with_suffix(".txt")
        if caption is None and beside.is_file():
            caption = beside.read_text(encoding="utf-8").strip()
        if not caption or not str(caption).strip():
            missing_caption.append(str(row.video))
            caption = ""
        mask = row.masks or str(entry.get("masks") or "")
        if not mask and masks is not None:
            stem = Path(row.relative).with_suffix("").as_posix()
            for candidate in (Path(masks) / f"{stem}.png", Path(masks) / f"{row.video.stem}.png"):
                if candidate.is_file():
                    mask = str(candidate)
                    break
        if settings.objects_from == "masks" and not (mask and Path(mask).is_file()):
            missing_masks.append(str(row.video))
        key = clip_key(row.relative)
        if key in clips:
            raise TTMInputError("input", f"{row.video} is listed twice", "list every video once")
        clips[key] = ClipInput(key, str(row.video), str(caption).strip(), mask,
                               row.motion_prompt or str(entry.get("motion_prompt") or ""),
                               row.objects or _objects(entry.get("objects"), str(row.video)))

    def some(paths: list[str]) -> str:
        return ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")

    if missing_video:
        raise TTMInputError("input", f"{len(missing_video)} listed video(s) do not exist: {some(missing_video)}",
                            "fix the paths in the list (relative paths start at the list's folder)")
    if missing_caption:
        raise TTMInputError("captions", f"{len(missing_caption)} video(s) have no caption: {some(missing_caption)}",
                            "write VIDEO.txt beside each video, or pass --captions FILE.jsonl with "
                            '{"video": ..., "caption": ...} lines')
    if missing_masks:
        raise TTMInputError("masks", f"{len(missing_masks)} video(s) have no first-frame mask: {some(missing_masks)}",
                            "put MASKS/<video path without extension>.png (pixel value = object id) in the --masks "
                            "folder, or find objects from the captions (--objects-from caption)")
    return [clips[k] for k in sorted(clips)]


# --------------------------------------------------------------------------- workers

@dataclass(frozen=True)
class _Result:
    """What a worker sends back: the encoded sample (kept) or why not."""

    index: int
    key: str
    source: str
    sample: dict[str, Any] | None
    skipped: ClipSkipped | None


def _work(index: int, clip: ClipInput, settings: DataSettings, models: Models) -> _Result:
    outcome = process_clip(clip, settings, models)
    if isinstance(outcome, ClipRecord):
        return _Result(index, clip.key, clip.video, encode_sample(outcome, settings.crf), None)
    return _Result(index, clip.key, clip.video, None, outcome)


_WORKER: dict[str, Any] = {}


def _limit_threads() -> None:
    """One thread per worker process: N processes on N cores, not N x N threads."""
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _init_process(text: str) -> None:
    _limit_threads()
    settings = settings_from_json(text)
    _WORKER["settings"] = settings
    _WORKER["models"] = load_models(settings)


def _process_one(index: int, clip: ClipInput) -> _Result:
    return _work(index, clip, _WORKER["settings"], _WORKER["models"])


class RayClipWorker:
    """A Ray Data actor (``map_batches``): loads the models once, then processes batches of clips.

    Batches are ``{"index": int64[B], "clip": str[B]}`` (``ClipInput`` as JSON); it returns
    ``{"index": int64[B], "result": object[B]}`` (pickled ``_Result``).
    """

    def __init__(self, settings_text: str) -> None:
        _limit_threads()
        self.settings = settings_from_json(settings_text)
        self.models = load_models(self.settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for index, text in zip(batch["index"].tolist(), batch["clip"].tolist()):
            fields = json.loads(text)
            fields["objects"] = tuple((str(n), str(p)) for n, p in fields["objects"])
            clip = ClipInput(**fields)
            out.append(pickle.dumps(_work(int(index), clip, self.settings, self.models)))
        result = np.empty(len(out), dtype=object)
        result[:] = out
        return {"index": batch["index"], "result": result}


def _local_results(pending: list[tuple[int, ClipInput]], settings: DataSettings) -> Iterator[_Result]:
    if settings.workers == 1:
        models = load_models(settings)
        for index, clip in pending:
            yield _work(index, clip, settings, models)
        return
    context = multiprocessing.get_context("spawn")
    window = settings.workers * 3
    with concurrent.futures.ProcessPoolExecutor(settings.workers, mp_context=context, initializer=_init_process,
                                                initargs=(settings_json(settings),)) as pool:
        queue = iter(pending)
        running: set[concurrent.futures.Future[_Result]] = set()
        try:
            while True:
                while len(running) < window and (item := next(queue, None)) is not None:
                    running.add(pool.submit(_process_one, *item))
                if not running:
                    return
                finished, running = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
        finally:
            for future in running:
                future.cancel()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise TTMInputError("ray_address", f"Ray is not installed ({err})",
                            "pip install -r requirements-train.txt (ray[data])") from None
    return ray


def _ray_results(pending: list[tuple[int, ClipInput]], settings: DataSettings) -> Iterator[_Result]:
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        root = str(Path(__file__).resolve().parents[2])
        if settings.ray_address == "local":
            # Workers import ttm_core from this checkout; a cluster's nodes need the pack installed.
            ray.init(num_cpus=settings.workers, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": root}})
        else:
            ray.init(address=settings.ray_address, log_to_driver=False)
        started = True
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        items = [{"index": index, "clip": json.dumps(dataclasses.asdict(clip))} for index, clip in pending]
        dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), settings.workers * 4)))
        gpu = {"num_gpus": settings.num_gpus} if settings.num_gpus > 0 else {}
        dataset = dataset.map_batches(RayClipWorker, fn_constructor_kwargs={"settings_text": settings_json(settings)},
                                      batch_size=1, compute=ray.data.ActorPoolStrategy(size=settings.workers),
                                      num_cpus=1, batch_format="numpy",
                                      **gpu)
        for batch in dataset.iter_batches(batch_size=1, batch_format="numpy"):
            for payload in batch["result"]:
                yield pickle.loads(payload)
    finally:
        if started:
            ray.shutdown()


# --------------------------------------------------------------------------- build

@dataclass(frozen=True)
class BuildReport:
    """What a build did.

    Attributes:
        total: clips listed; already: finished by an earlier run (skipped now); processed: clips made now.
        done, skipped: of the processed, kept in shards / skipped (reason -> count).
        shards: shard files written now.
        seconds: wall time of this run.
    """

    total: int
    already: int
    processed: int
    done: int
    skipped: dict[str, int] = field(default_factory=dict)
    shards: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def clips_per_minute(self) -> float:
        return 60.0 * self.processed / self.seconds if self.seconds > 0 else 0.0


def _check_settings(out: Path, settings: DataSettings) -> None:
    path = out / BUILD_FILE
    current = settings.content_key()
    if path.is_file():
        recorded = json.loads(path.read_text(encoding="utf-8")).get("settings", {})
        changed = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
        if changed:
            detail = ", ".join(f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}" for k in changed[:6])
            raise TTMInputError("out", f"{out} was built with other settings ({detail})",
                                "resume with the same settings, or build into a new --out folder")
        return
    path.write_text(json.dumps({"settings": current, "format": "ttm-data/1"}, indent=2, sort_keys=True) + "\n",
                    encoding="utf-8")


def _next_shard(out: Path, manifest: Manifest) -> int:
    names = {p.name for p in out.glob("shard-*.tar")} | {e.shard for e in manifest.entries.values() if e.shard}
    numbers = [int(n[6:12]) for n in names if len(n) >= 12 and n[6:12].isdigit()]
    return max(numbers, default=-1) + 1


def build_dataset(inputs: Sequence[ClipInput], out: Path | str, settings: DataSettings,
                  progress: ProgressFn | None = None,
                  on_skip: Callable[[ClipSkipped], None] | None = None) -> BuildReport:
    """Make the clips of ``inputs`` and write them as shards into ``out`` (resuming a build there).

    Args:
        inputs: clips (``list_inputs``); built in key order.
        out: output folder (created); holds ``shard-*.tar``, ``manifest.jsonl`` and ``build.json``.
        settings: see ``DataSettings``; a folder built with other content settings is refused.
        progress: called with (clips finished now, clips to make now) after every clip.
        on_skip: called with every skipped clip (the CLI prints them).
    Returns:
        a ``BuildReport``.
    """
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, settings)
    remove_partials(out)
    manifest = Manifest(out)
    remove_orphans(out, manifest)
    ordered = sorted(inputs, key=lambda c: c.key)
    pending = [(i, c) for i, c in enumerate(ordered) if not manifest.finished(c.key)]
    already = len(ordered) - len(pending)
    if already:
        LOG.info("resuming in %s: %d of %d clips are finished, %d to make", out, already, len(ordered), len(pending))
    next_index = _next_shard(out, manifest)
    written: list[str] = []
    buffer: list[_Result] = []
    skipped: dict[str, int] = {}
    done = 0

    def flush() -> None:
        nonlocal next_index
        if not buffer:
            return
        name = shard_name(next_index)
        write_shard(out / name, [r.sample for r in buffer if r.sample is not None])
        manifest.append(ManifestEntry(r.key, r.source, "done", name) for r in buffer)
        LOG.info("wrote %s (%d clips)", name, len(buffer))
        written.append(name)
        next_index += 1
        buffer.clear()

    results = _ray_results(pending, settings) if settings.ray_address else _local_results(pending, settings)
    waiting: dict[int, _Result] = {}
    order = iter([i for i, _ in pending])
    expected = next(order, None)
    finished = 0
    for result in results:
        waiting[result.index] = result
        while expected is not None and expected in waiting:
            current = waiting.pop(expected)
            expected = next(order, None)
            finished += 1
            if current.skipped is not None:
                reason = current.skipped.reason
                skipped[reason] = skipped.get(reason, 0) + 1
                manifest.append([ManifestEntry(current.key, current.source, "skipped", "", reason,
                                               current.skipped.message)])
                if on_skip is not None:
                    on_skip(current.skipped)
            else:
                done += 1
                buffer.append(current)
                if len(buffer) >= settings.clips_per_shard:
                    flush()
            if progress is not None:
                progress(finished, len(pending))
    flush()
    report = BuildReport(len(ordered), already, finished, done, skipped, tuple(written),
                         time.perf_counter() - started)
    LOG.info("built %d clips (%d kept, %d skipped) into %d new shard(s) in %.1f s", report.processed, report.done,
             sum(skipped.values()), len(written), report.seconds)
    return report
