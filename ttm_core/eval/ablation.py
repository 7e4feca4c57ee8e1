"""The paper's ablation (Table 3) for any setup: each clip of a manifest rendered under the masked-attention
configurations (none / cross only / self only / both) with guidance on and off, through ttm-batch, then
scored and printed in Table 3's shape with this setup's numbers.

A configuration is a set of overrides of the workflow's Stage 2 inputs, on every node that has them (Motion
To Video · Wan native / · diffusers, Patch Model):

==================== ============== ===============
configuration        self_strength  cross_strength
==================== ============== ===============
no masked attention  0              0
cross only           0              1
self only            1              0
both                 1              1
==================== ============== ===============

times ``guidance`` on / off. Strength 0 is exactly the stock attention (the patch's own guarantee), so "no
masked attention" is the base model on the same trajectory input. Rendering goes through ttm-batch (its own
process: ``python -m ttm_batch``), so servers, retries, resume and the manifest work as there; each
configuration renders into ``OUT/renders/<config>/`` and ``--resume`` continues an interrupted run.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import TTMInputError

LOG = logging.getLogger(__name__)

ATTENTION = {"none": (0.0, 0.0), "cross": (0.0, 1.0), "self": (1.0, 0.0), "both": (1.0, 1.0)}
ATTENTION_LABELS = {"none": "no masked attention", "cross": "cross only", "self": "self only", "both": "both"}
STAGE2_INPUTS = ("self_strength", "cross_strength", "guidance")
FILE_FIELDS = ("image", "trajectory")


def configurations(guidance: Sequence[bool] = (False, True), attention: Sequence[str] = tuple(ATTENTION)
                   ) -> dict[str, dict[str, Any]]:
    """Name -> Stage 2 input values, in Table 3's order (guidance off first); ``attention``: which of
    none / cross / self / both (a subset, e.g. for a quick two-row check)."""
    unknown = [key for key in attention if key not in ATTENTION]
    if unknown or not attention:
        raise TTMInputError("attention", f"{', '.join(unknown) or 'nothing'} is not one of {', '.join(ATTENTION)}",
                            "use a comma-separated subset, e.g. none,both")
    out = {}
    for guided in guidance:
        for key, (self_strength, cross_strength) in ATTENTION.items():
            if key not in attention:
                continue
            out[f"{key}-{'guided' if guided else 'unguided'}"] = {
                "self_strength": self_strength, "cross_strength": cross_strength, "guidance": guided}
    return out


def label(name: str) -> str:
    """'cross-guided' -> 'cross only + guidance'."""
    key, _, guided = name.partition("-")
    return ATTENTION_LABELS.get(key, key) + (" + guidance" if guided == "guided" else "")


def stage2_nodes(workflow: Mapping[str, Any]) -> list[str]:
    """Ids of the workflow's nodes that take all of ``STAGE2_INPUTS``."""
    nodes = [node_id for node_id, node in workflow.items()
             if isinstance(node, Mapping) and all(k in node.get("inputs", {}) for k in STAGE2_INPUTS)]
    if not nodes:
        raise TTMInputError("workflow", f"no node has the inputs {', '.join(STAGE2_INPUTS)}",
                            "use a workflow with Motion To Video · Wan native or · diffusers, or Patch Model")
    return nodes


def _absolute(job: dict[str, Any], base: Path) -> dict[str, Any]:
    """The job with its file fields absolute (the per-configuration jobs files live elsewhere)."""
    job = dict(job)
    for key in FILE_FIELDS:
        if isinstance(job.get(key), str):
            job[key] = str((base / job[key]).resolve())
    if isinstance(job.get("masks"), list):
        job["masks"] = [str((base / m).resolve()) for m in job["masks"]]
    return job


def write_jobs(manifest: Path, workflow: Mapping[str, Any], out: Path,
               guidance: Sequence[bool] = (False, True), attention: Sequence[str] = tuple(ATTENTION)
               ) -> dict[str, Path]:
    """One jobs file per configuration in ``out/jobs/``: the manifest's lines with the configuration's
    overrides on every Stage 2 node (the line's own overrides kept, the configuration's win)."""
    nodes = stage2_nodes(workflow)
    if not manifest.is_file():
        raise TTMInputError("manifest", f"{manifest} does not exist", "pass a jobs file, e.g. a generated set's "
                            "jobs.jsonl (ttm-eval generate-set)")
    jobs = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    if not jobs:
        raise TTMInputError("manifest", f"{manifest} lists no jobs", "give one job per line")
    written = {}
    (out / "jobs").mkdir(parents=True, exist_ok=True)
    for name, values in configurations(guidance, attention).items():
        lines = []
        for job in jobs:
            job = _absolute(job, manifest.parent)
            overrides = dict(job.get("overrides", {}))
            for node_id in nodes:
                for key, value in values.items():
                    overrides[f"{node_id}.{key}"] = value
            job["overrides"] = overrides
            lines.append(json.dumps(job, ensure_ascii=False))
        path = out / "jobs" / f"{name}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        written[name] = path
    return written


def render(jobs: Mapping[str, Path], workflow_path: Path, servers: Sequence[str], out: Path, *,
           per_server: int = 2, resume: bool = False, progress: bool = False) -> dict[str, int]:
    """Run ttm-batch once per configuration (``python -m ttm_batch``); returns each one's exit status
    (0 all done, 1 some failed: those clips are then missing from the scores)."""
    statuses = {}
    for name, path in jobs.items():
        command = [sys.executable, "-m", "ttm_batch", "--workflow", str(workflow_path), "--jobs", str(path),
                   "--out", str(out / "renders" / name), "--per-server", str(per_server),
                   "--progress", "on" if progress else "off"]
        for server in servers:
            command += ["--server", server]
        if resume:
            command.append("--resume")
        LOG.info("ablation: rendering %s (%s)", name, label(name))
        statuses[name] = subprocess.run(command, check=False).returncode
        if statuses[name] == 2:
            raise TTMInputError("workflow", f"ttm-batch could not start the {name!r} renders (exit status 2; its "
                                "message is above)", "check the servers and that the workflow fits the jobs")
    return statuses


def table(results: Mapping[str, Any], metrics: Sequence[str]) -> str:
    """Table 3's shape: one row per configuration (labelled as in the paper), one column per metric."""
    from .report import markdown_table

    rows = {label(name): row for name, row in results["summary"].items()}
    return markdown_table(rows, metrics, first="configuration")
