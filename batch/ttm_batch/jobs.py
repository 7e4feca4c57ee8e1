"""Batch jobs: read a jobs file, validate every job against the workflow, patch the workflow.

A job is one line of a JSONL or CSV file. JSONL fields (all optional but ``image`` when the
workflow loads one)::

    {"id": "shot-01",                        # default: "line-<n>"
     "image": "shots/a.png",                 # -> the workflow's one LoadImage node
     "masks": ["shots/a_1.png", "shots/a_2.png"],   # -> its LoadImageMask nodes, in id order
     "prompt": "two coins slide ...",        # -> TTM_PromptDecompose.global_prompt
     "motion": "two coins slide",            # -> TTM_PromptDecompose.motion_prompt
     "objects": {"left coin": "a small coin"},      # or "name: prompt" lines -> .objects
     "paths": {"version": 1, "objects": {...}},     # -> TTM_ImageToMotion.paths
     "trajectory": "shots/a_trajectory.npz",  # -> TTM_LoadTrajectory.file (uploaded first)
     "seed": 7,                              # -> every 'seed' / 'noise_seed' input
     "overrides": {"Image to Motion.num_frames": 25,            # node title (or id) . input
                   "Video Combine": {"format": "webm"},
                   "Mask: big coin.image": {"file": "other_mask.png"}}}   # uploaded first

CSV: a header row with any of id, image, masks (';'-separated), prompt, motion, objects
(lines, or ' | '-separated), paths (JSON), trajectory, seed, plus one column per override named
``<node title or id>.<input>`` (cells are parsed as JSON when they parse, else text).
Relative file paths are relative to the jobs file. Validation uses the server's
/object_info, so a typo is reported with its line number before anything is queued.
A ``trajectory`` is a file Save Trajectory wrote (docs/TRAJECTORY_FILE.md); it is checked
here (a readable archive of the version the pack reads) and uploaded to each server's input
folder, where the workflow's one Load Trajectory node reads it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import unicodedata
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SEMANTIC_FIELDS = ("id", "image", "masks", "prompt", "motion", "objects", "paths", "trajectory", "seed", "overrides")
# What ttm_core.motion.trajectory_file writes (ttm_batch stands alone: it does not import ttm_core).
TRAJECTORY_FORMAT, TRAJECTORY_VERSION, TRAJECTORY_META = "through-the-mask-trajectory", 1, "trajectory.json"
SEED_INPUTS = ("seed", "noise_seed")
ID_MAX_CHARS = 100
ID_MAX_BYTES = 255  # a folder name on ext4, APFS, NTFS: the id is the job's folder under --out
ID_RULE = ("use 1-100 letters (any script, with their accents) or digits and '.', '_', '-', starting with a "
           "letter or digit, e.g. 'shot-01' or 'unicode-고양이'")
_ID_PUNCTUATION = "._-"
_PLAIN_ASCII = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class JobError(ValueError):
    """A job that cannot run, with the jobs-file line it came from and the fix."""

    def __init__(self, line: int, problem: str, fix: str) -> None:
        self.line = line
        super().__init__(f"{f'line {line}: ' if line else ''}{problem}. Fix: {fix}")


@dataclass(frozen=True)
class FileValue:
    """An input value that is a local file, uploaded to each server before queueing."""

    path: Path


@dataclass(frozen=True)
class Job:
    """One validated job: the (node id, input) -> value settings to apply to the workflow."""

    line: int
    id: str
    settings: Mapping[tuple[str, str], Any] = field(default_factory=dict)

    @property
    def files(self) -> list[tuple[str, str, Path]]:
        """(node id, input, local path) of every value to upload."""
        return [(node, name, value.path) for (node, name), value in self.settings.items()
                if isinstance(value, FileValue)]


@dataclass(frozen=True)
class RawJob:
    """A jobs-file line as read, before validation."""

    line: int
    fields: Mapping[str, Any]


def read_jobs(path: Path) -> list[RawJob]:
    """Read a .jsonl / .json-lines or .csv jobs file; blank lines and '#' lines are skipped."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        rows = []
        reader = csv.DictReader(text.splitlines(keepends=True))
        for row in reader:
            fields = {k.strip(): (v or "").strip() for k, v in row.items() if k and (v or "").strip()}
            if fields:
                rows.append(RawJob(reader.line_num, _csv_fields(fields, reader.line_num)))
        return rows
    jobs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise JobError(number, f"not valid JSON ({err.msg} at column {err.colno})",
                           "write one JSON object per line") from None
        if not isinstance(value, dict):
            raise JobError(number, "the line is not a JSON object", "write one {...} object per line")
        jobs.append(RawJob(number, value))
    return jobs


def _csv_fields(row: Mapping[str, str], line: int) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    for key, value in row.items():
        if key in SEMANTIC_FIELDS:
            if key == "masks":
                fields[key] = [m.strip() for m in value.split(";") if m.strip()]
            elif key == "objects":
                fields[key] = value.replace(" | ", "\n")
            elif key in ("paths", "seed"):
                fields[key] = _maybe_json(value)
            else:
                fields[key] = value
        elif "." in key:
            overrides[key] = _maybe_json(value)
        else:
            raise JobError(line, f"unknown column {key!r}",
                           f"use {', '.join(SEMANTIC_FIELDS[:-1])} or '<node title>.<input>' columns")
    if overrides:
        fields["overrides"] = overrides
    return fields


def _maybe_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# --------------------------------------------------------------------------- validation

def _input_spec(object_info: Mapping[str, Any], class_type: str, name: str) -> Sequence[Any] | None:
    info = object_info.get(class_type, {}).get("input", {})
    return info.get("required", {}).get(name) or info.get("optional", {}).get(name)


def _check_value(spec: Sequence[Any], value: Any, where: str, line: int) -> Any:
    """Check a widget value against its /object_info spec; returns the value to send."""
    kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {})
    if isinstance(kind, list) or kind == "COMBO":
        choices = kind if isinstance(kind, list) else options.get("options", [])
        if isinstance(value, FileValue):
            return value
        if choices and value not in choices:
            shown = ", ".join(map(str, choices[:8])) + (" ..." if len(choices) > 8 else "")
            raise JobError(line, f"{where} = {value!r} is not one of its choices ({shown})",
                           "use one of the listed values, or {\"file\": \"path\"} to upload a file")
        return value
    if kind == "INT":
        if isinstance(value, bool) or not isinstance(value, int):
            raise JobError(line, f"{where} = {value!r} is not an integer", "give a whole number")
    elif kind == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise JobError(line, f"{where} = {value!r} is not a number", "give a number")
        value = float(value)
    elif kind == "BOOLEAN":
        if not isinstance(value, bool):
            raise JobError(line, f"{where} = {value!r} is not true/false", "give true or false")
    elif kind == "STRING":
        if not isinstance(value, str):
            value = json.dumps(value) if isinstance(value, (dict, list)) else None
            if value is None:
                raise JobError(line, f"{where} is not text", "give a string")
    else:
        raise JobError(line, f"{where} is a {kind} socket, not a value", "override widget inputs only")
    low, high = options.get("min"), options.get("max")
    if kind in ("INT", "FLOAT") and ((low is not None and value < low) or (high is not None and value > high)):
        raise JobError(line, f"{where} = {value} is outside {low}..{high}", f"use a value in {low}..{high}")
    return value


class WorkflowIndex:
    """Finds nodes of an API-format workflow by title, id or class."""

    def __init__(self, workflow: Mapping[str, Any]) -> None:
        self.workflow = workflow
        self.by_title: dict[str, list[str]] = {}
        for node_id, node in workflow.items():
            title = node.get("_meta", {}).get("title")
            if title:
                self.by_title.setdefault(title, []).append(node_id)

    def resolve(self, ref: str, line: int) -> str:
        if ref in self.by_title:
            if len(self.by_title[ref]) > 1:
                raise JobError(line, f"the title {ref!r} names {len(self.by_title[ref])} nodes",
                               "address the node by its id instead")
            return self.by_title[ref][0]
        if ref in self.workflow:
            return ref
        titles = ", ".join(sorted(self.by_title)) or "none"
        raise JobError(line, f"no node titled or numbered {ref!r} in the workflow (titles: {titles})",
                       "use a node title from the workflow, or its id")

    def of_class(self, class_type: str) -> list[str]:
        return sorted((i for i, n in self.workflow.items() if n.get("class_type") == class_type),
                      key=lambda i: (len(i), i))


def _id_char(char: str, first: bool) -> bool:
    if first:
        return char.isalnum()
    # Marks (accents, vowel signs, viramas) belong to the letter before them: Devanagari, Thai,
    # Tamil ... words are letters + marks even after NFC, and str.isalnum() is False for a mark.
    return char.isalnum() or char in _ID_PUNCTUATION or unicodedata.category(char).startswith("M")


def _id_problem(job_id: str) -> str | None:
    """Why ``job_id`` (NFC) cannot be a job id, or None if it can."""
    if not job_id:
        return "it is empty"
    if len(job_id) > ID_MAX_CHARS:
        return f"it has {len(job_id)} characters, more than {ID_MAX_CHARS}"
    if len(job_id.encode("utf-8")) > ID_MAX_BYTES:
        return f"it is {len(job_id.encode('utf-8'))} bytes in UTF-8, more than a folder name holds ({ID_MAX_BYTES})"
    for position, char in enumerate(job_id):
        if _id_char(char, position == 0):
            continue
        if char in "/\\":
            what = f"the path separator {char!r}"
        elif char.isspace():
            name = unicodedata.name(char, "")
            what = f"whitespace ({name.lower() if name else f'U+{ord(char):04X}'})"
        elif unicodedata.category(char).startswith("C"):
            what = f"the control or format character U+{ord(char):04X}"
        else:
            what = repr(char)
        return f"it starts with {what}" if position == 0 else f"it contains {what}"
    return None


def _id_suggestion(job_id: str) -> str | None:
    """``job_id`` with every character an id cannot have replaced by '-' (None if nothing is left)."""
    text = re.sub(r"-{2,}", "-", "".join(c if _id_char(c, False) else "-" for c in job_id))
    while text and not text[0].isalnum():
        text = text[1:]
    text = text[:ID_MAX_CHARS].rstrip("-")
    while len(text.encode("utf-8")) > ID_MAX_BYTES:
        text = text[:-1]
    return text if text and _id_problem(text) is None else None


def check_id(value: Any, line: int) -> str:
    """The job id of a jobs-file line (Unicode NFC), or JobError naming what is wrong and what is allowed."""
    job_id = unicodedata.normalize("NFC", str(value))
    problem = _id_problem(job_id)
    if problem:
        suggestion = _id_suggestion(job_id)
        raise JobError(line, f"id {str(value)!r} cannot be a job id: {problem}",
                       ID_RULE + (f"; this one could be {suggestion!r}" if suggestion else ""))
    return job_id


def server_name(text: str, max_chars: int = ID_MAX_CHARS) -> str:
    """An ASCII file-name part for ``text`` on the servers (upload names, filename prefixes).

    ``text`` itself when it is plain ASCII (letters, digits, '.', '_', '-'; so ASCII ids keep
    their names), else its ASCII letters and digits plus a hash of the whole text ('unicode-고양이'
    -> 'unicode-9282859e14'). ComfyUI 0.3.75 stores non-ASCII names as given, but a server's file
    system, locale or proxy may not; the job's own folder under --out keeps the real id.
    """
    if _PLAIN_ASCII.match(text) and len(text) <= max_chars:
        return text
    ascii_part = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    ascii_part = re.sub(r"[^A-Za-z0-9._-]+", "-", ascii_part).strip("._-")[:max_chars - 11].rstrip("._-")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]
    return f"{ascii_part or 'x'}-{digest}"


def _file(base: Path, value: Any, what: str, line: int) -> FileValue:
    if not isinstance(value, str) or not value.strip():
        raise JobError(line, f"{what} is {value!r}, not a file path", "give a path to an image file")
    path = (base / value).expanduser()
    if not path.is_file():
        raise JobError(line, f"{what} {value!r} does not exist ({path})", "fix the path (relative to the jobs file)")
    return FileValue(path.resolve())


def _trajectory_file(base: Path, value: Any, line: int) -> FileValue:
    """A Save Trajectory file: checked to be one, of the version the pack reads, before anything is queued."""
    file = _file(base, value, "trajectory", line)
    fix = "give a .npz written by Save Trajectory (Through-The-Mask), from the output folder"
    try:
        with zipfile.ZipFile(file.path) as archive:
            damaged = archive.testzip()  # every member's CRC: a damaged file is refused here, not on the server
            meta = json.loads(archive.read(TRAJECTORY_META))
    except (zipfile.BadZipFile, zlib.error, KeyError, UnicodeDecodeError, json.JSONDecodeError, OSError,
            RuntimeError, NotImplementedError, EOFError):
        raise JobError(line, f"trajectory {value!r} is not a readable trajectory file", fix) from None
    if damaged is not None:
        raise JobError(line, f"trajectory {value!r} is damaged ({damaged} fails its checksum)", fix)
    if not isinstance(meta, dict) or meta.get("format") != TRAJECTORY_FORMAT:
        raise JobError(line, f"trajectory {value!r} is not a Through-The-Mask trajectory", fix)
    version = meta.get("version")
    if type(version) is not int or version != TRAJECTORY_VERSION:  # 1.0 or true are not version 1
        raise JobError(line, f"trajectory {value!r} is a version {meta.get('version')!r} file; the pack reads "
                       f"version {TRAJECTORY_VERSION}", "save it again with the servers' Save Trajectory")
    return file


def _one(index: WorkflowIndex, class_type: str, field_name: str, line: int) -> str:
    nodes = index.of_class(class_type)
    if len(nodes) != 1:
        raise JobError(line, f"'{field_name}' needs exactly one {class_type} node, the workflow has {len(nodes)}",
                       "use 'overrides' with the node's title instead")
    return nodes[0]


def validate_job(raw: RawJob, workflow: Mapping[str, Any], object_info: Mapping[str, Any], base: Path) -> Job:
    """Turn a raw line into a Job, or raise JobError naming the line and the fix."""
    fields, line = raw.fields, raw.line
    unknown = set(fields) - set(SEMANTIC_FIELDS)
    if unknown:
        raise JobError(line, f"unknown fields {sorted(unknown)}", f"use {', '.join(SEMANTIC_FIELDS)}")
    job_id = check_id(fields.get("id", f"line-{line}"), line)
    index = WorkflowIndex(workflow)
    settings: dict[tuple[str, str], Any] = {}

    def put(node_id: str, name: str, value: Any) -> None:
        class_type = workflow[node_id]["class_type"]
        spec = _input_spec(object_info, class_type, name)
        where = f"{workflow[node_id].get('_meta', {}).get('title', node_id)}.{name}"
        if spec is None:
            known = sorted({**object_info.get(class_type, {}).get("input", {}).get("required", {}),
                            **object_info.get(class_type, {}).get("input", {}).get("optional", {})})
            raise JobError(line, f"{class_type} has no input {name!r} ({where})",
                           f"use one of: {', '.join(known)}")
        settings[(node_id, name)] = _check_value(spec, value, where, line)

    if "image" in fields:
        put(_one(index, "LoadImage", "image", line), "image", _file(base, fields["image"], "image", line))
    if "masks" in fields:
        masks = fields["masks"]
        nodes = index.of_class("LoadImageMask")
        if not isinstance(masks, list) or len(masks) != len(nodes):
            raise JobError(line, f"'masks' gives {len(masks) if isinstance(masks, list) else masks!r} for the "
                           f"workflow's {len(nodes)} LoadImageMask nodes", "give one mask file per LoadImageMask node")
        for node_id, mask in zip(nodes, masks):
            put(node_id, "image", _file(base, mask, "mask", line))
    for key, name in (("prompt", "global_prompt"), ("motion", "motion_prompt"), ("objects", "objects")):
        if key in fields:
            value = fields[key]
            if key == "objects" and isinstance(value, Mapping):
                value = "\n".join(f"{k}: {v}" for k, v in value.items())
            put(_one(index, "TTM_PromptDecompose", key, line), name, value)
    if "paths" in fields:
        value = fields["paths"]
        put(_one(index, "TTM_ImageToMotion", "paths", line), "paths", value if isinstance(value, str) else
            json.dumps(value))
    if "trajectory" in fields:
        put(_one(index, "TTM_LoadTrajectory", "trajectory", line), "file",
            _trajectory_file(base, fields["trajectory"], line))
    if "seed" in fields:
        targets = [(i, n) for i, node in workflow.items() for n in SEED_INPUTS
                   if n in node.get("inputs", {}) and not isinstance(node["inputs"][n], list)]
        if not targets:
            raise JobError(line, "the job sets 'seed' but the workflow has no seed input",
                           "remove 'seed', or use a workflow with a sampler")
        for node_id, name in targets:
            put(node_id, name, fields["seed"])
    overrides = fields.get("overrides", {})
    if not isinstance(overrides, Mapping):
        raise JobError(line, "'overrides' is not an object", "write {\"<node title>.<input>\": value}")
    for key, value in overrides.items():
        if isinstance(value, Mapping) and set(value) != {"file"}:
            node_id = index.resolve(str(key), line)
            for name, inner in value.items():
                put(node_id, name, _file(base, inner["file"], f"{key}.{name}", line)
                    if isinstance(inner, Mapping) and "file" in inner else inner)
            continue
        ref, dot, name = str(key).rpartition(".")
        if not dot:
            raise JobError(line, f"override {key!r} names no input", "write '<node title>.<input>'")
        node_id = index.resolve(ref, line)
        put(node_id, name, _file(base, value["file"], key, line) if isinstance(value, Mapping) else value)
    return Job(line, job_id, settings)


def validate_jobs(raws: Sequence[RawJob], workflow: Mapping[str, Any], object_info: Mapping[str, Any],
                  base: Path) -> tuple[list[Job], list[JobError]]:
    """Validate every line; a duplicate id is an error on the later line (the first line keeps the id)."""
    missing = sorted({n["class_type"] for n in workflow.values()} - set(object_info))
    if missing:
        raise JobError(0, f"the server lacks the workflow's node types {missing}",
                       "install the packs the workflow needs on every server")
    jobs: list[Job] = []
    errors: list[JobError] = []
    seen: dict[str, int] = {}  # id -> the line that has it
    for raw in raws:
        try:
            job = validate_job(raw, workflow, object_info, base)
            if job.id in seen:
                raise JobError(raw.line, f"the id {job.id!r} is used twice (line {seen[job.id]} has it too)",
                               "give every job a unique id")
            seen[job.id] = raw.line
            jobs.append(job)
        except JobError as err:
            errors.append(err)
    return jobs, errors


def apply_job(workflow: Mapping[str, Any], job: Job, uploaded: Mapping[Path, str], prefix: str) -> dict[str, Any]:
    """The workflow with the job's settings, uploaded file names and an output prefix of its own."""
    patched = json.loads(json.dumps(workflow))
    for (node_id, name), value in job.settings.items():
        patched[node_id]["inputs"][name] = uploaded[value.path] if isinstance(value, FileValue) else value
    for node in patched.values():
        if isinstance(node.get("inputs", {}).get("filename_prefix"), str):
            node["inputs"]["filename_prefix"] = prefix
    return patched
