"""ttm-batch against real ComfyUI servers: spread, bad jobs, a server dying, resume after Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

from common import ROOT, WORKFLOWS, load_workflow
from tools.comfy_harness import ComfyServer
from ttm_batch import runner as batch_runner
from ttm_batch.client import ComfyClient
from ttm_batch.jobs import JobError, check_id, read_jobs, validate_jobs

pytestmark = pytest.mark.server
WORKFLOW = WORKFLOWS / "ttm_warp_paths_api.json"
EXAMPLES = ROOT / "examples"
# `python -m ttm_batch` in a child process: batch/ holds the package (pytest's pythonpath is ours only).
BATCH_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    p for p in (str(ROOT / "batch"), os.environ.get("PYTHONPATH", "")) if p))


def start_servers(base: Path, count: int) -> list[ComfyServer]:
    servers = [ComfyServer(base / f"server{i}") for i in range(count)]
    threads = [threading.Thread(target=s.start) for s in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(s.alive() for s in servers), [s.log_tail() for s in servers]
    return servers


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ComfyServer]]:
    servers = start_servers(tmp_path_factory.mktemp("batch"), 2)
    yield servers
    for server in servers:
        server.stop()


def job(i: int, frames: int = 9, **extra: object) -> dict:
    """A model-free job: the coins, the left coin sent to a different place each time."""
    return {"id": f"shot-{i:02d}", "image": str(EXAMPLES / "ttm_coins.png"),
            "masks": [str(EXAMPLES / "ttm_coins_mask_left.png"), str(EXAMPLES / "ttm_coins_mask_right.png")],
            "prompt": f"Two coins slide, take {i}.",
            "paths": {"version": 1, "units": "pixels",
                      "objects": {"left coin": {"keyframes": [{"t": 1.0, "x": 100 + 7 * i, "y": 152}]}}},
            "overrides": {"Image to Motion.num_frames": frames}} | extra


def write_jobs(folder: Path, jobs: list[dict]) -> Path:
    path = folder / "jobs.jsonl"
    path.write_text("".join(json.dumps(j) + "\n" for j in jobs))
    return path


def batch_command(servers: list[ComfyServer], jobs: Path, out: Path, *extra: str) -> list[str]:
    command = [sys.executable, "-m", "ttm_batch", "--workflow", str(WORKFLOW), "--jobs", str(jobs),
               "--out", str(out), "--progress", "off", *extra]
    for server in servers:
        command += ["--server", server.url]
    return command


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_jobs_are_validated_against_workflow_and_object_info(client: ComfyClient, tmp_path: Path) -> None:
    jobs = [job(1), job(2, overrides={"Image to Motion.speed": 2}), job(3, image="nope.png"),
            job(4, overrides={"Image to Motion.num_frames": "many"}), job(5, overrides={"Video Combine.format": "avi"}),
            job(6, seed=3), job(7, overrides={"No Such Node.x": 1}), job(1),
            job(8, overrides={"Video Combine": {"format": "webm", "quality": 70}})]
    raws = read_jobs(write_jobs(tmp_path, jobs))
    workflow = load_workflow(WORKFLOW.name)
    valid, errors = validate_jobs(raws, workflow, client.object_info(), tmp_path)
    assert [j.id for j in valid] == ["shot-01", "shot-06", "shot-08"]
    # 'seed' goes to every seed input: here Prompt Decompose's (LLM) and Image To Motion's (plan); the warp node
    # takes none
    assert {(node, name): value for (node, name), value in valid[1].settings.items() if name == "seed"} == \
        {("4", "seed"): 3, ("6", "seed"): 3}
    legacy = json.loads((ROOT / "tests" / "data" / "legacy" / WORKFLOW.name).read_text())
    legacy_valid, _ = validate_jobs(raws, legacy, client.object_info(), tmp_path)
    assert {(node, name): value for (node, name), value in legacy_valid[1].settings.items() if name == "seed"} == \
        {("4", "seed"): 3, ("7", "seed"): 3}  # and every one in the workflow: the all-in-one node's too
    without_seed = {k: {**v, "inputs": {n: x for n, x in v["inputs"].items() if n != "seed"}}
                    for k, v in workflow.items()}
    _, seedless = validate_jobs(raws[5:6], without_seed, client.object_info(), tmp_path)
    assert str(seedless[0]).startswith("line 6: the job sets 'seed' but the workflow has no seed input")
    messages = [str(e) for e in errors]
    assert messages[0].startswith("line 2: TTM_ImageToMotion has no input 'speed' (Image to Motion.speed)")
    assert "num_frames" in messages[0] and "Fix: use one of:" in messages[0]
    assert messages[1].startswith("line 3: image 'nope.png' does not exist")
    assert messages[2].startswith("line 4: Image to Motion.num_frames = 'many' is not an integer")
    assert messages[3].startswith("line 5: Video Combine.format = 'avi' is not one of its choices")
    assert messages[4].startswith("line 7: no node titled or numbered 'No Such Node'")
    assert messages[5].startswith("line 8: the id 'shot-01' is used twice")
    settings = {name: value for (_, name), value in valid[2].settings.items()}
    assert settings["format"] == "webm" and settings["quality"] == 70


def test_csv_jobs(client: ComfyClient, tmp_path: Path) -> None:
    (tmp_path / "jobs.csv").write_text(
        "id,image,masks,objects,Image to Motion.num_frames\n"
        f"a,{EXAMPLES / 'ttm_coins.png'},{EXAMPLES / 'ttm_coins_mask_left.png'};"
        f"{EXAMPLES / 'ttm_coins_mask_right.png'},left coin: a coin | big coin: a big coin,12\n")
    valid, errors = validate_jobs(read_jobs(tmp_path / "jobs.csv"), load_workflow(WORKFLOW.name),
                                  client.object_info(), tmp_path)
    assert errors == []
    settings = {name: value for (_, name), value in valid[0].settings.items()}
    assert settings["objects"] == "left coin: a coin\nbig coin: a big coin"
    assert settings["num_frames"] == 12
    with pytest.raises(JobError, match="line 1: not valid JSON"):
        (tmp_path / "bad.jsonl").write_text("{oops\n")
        read_jobs(tmp_path / "bad.jsonl")


def test_twenty_jobs_over_two_servers(two_servers: list[ComfyServer], tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path, [job(i) for i in range(20)])
    out = tmp_path / "out"
    result = subprocess.run(batch_command(two_servers, jobs, out), cwd=ROOT, env=BATCH_ENV, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    entries = manifest(out)
    assert sorted(e["job"] for e in entries) == [f"shot-{i:02d}" for i in range(20)]
    assert {e["status"] for e in entries} == {"done"}
    servers = Counter(e["server"] for e in entries)
    assert set(servers) == {s.url for s in two_servers}, servers
    for entry in entries:
        assert entry["prompt_id"] and entry["seconds"] > 0 and entry["attempts"] == 1
        assert len(entry["files"]) == 1 and entry["files"][0].endswith(".mp4")
        assert frame_count(out / entry["files"][0]) == 9


def test_bad_jobs_are_reported_and_the_rest_complete(two_servers: list[ComfyServer], tmp_path: Path) -> None:
    failing_paths = {"version": 1, "objects": {"bird": {"keyframes": [{"t": 1, "x": 0.5, "y": 0.5}]}}}
    jobs = write_jobs(tmp_path, [job(0), job(1, image="missing.png"), job(2, overrides={"Image to Motion.speed": 1}),
                                 job(3, paths=failing_paths), job(4)])
    out = tmp_path / "out"
    result = subprocess.run(batch_command(two_servers, jobs, out, "--retries", "1"), cwd=ROOT, env=BATCH_ENV,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 1
    entries = {e["job"]: e for e in manifest(out)}
    assert entries["shot-00"]["status"] == entries["shot-04"]["status"] == "done"
    assert "line 2: image 'missing.png' does not exist" in entries["shot-01"]["error"]
    assert "line 3: TTM_ImageToMotion has no input 'speed'" in entries["shot-02"]["error"]
    failed = entries["shot-03"]
    assert failed["status"] == "failed" and failed["attempts"] == 2  # retried once, failed again
    assert "TTM_ImageToMotion" in failed["error"] and "there is no object 'bird'" in failed["error"]
    assert not (out / "shot-03").exists() or not any((out / "shot-03").iterdir())


def test_a_dying_server_loses_nothing(tmp_path: Path) -> None:
    survivor, victim = start_servers(tmp_path, 2)
    try:
        jobs = write_jobs(tmp_path, [job(i, frames=60) for i in range(12)])
        out = tmp_path / "out"
        process = subprocess.Popen(batch_command([survivor, victim], jobs, out), cwd=ROOT, env=BATCH_ENV,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        victim_client = ComfyClient(victim.url, timeout=10)
        running = None
        deadline = time.monotonic() + 300
        while running is None and time.monotonic() < deadline:  # kill it while it runs one of our jobs
            done = len(manifest(out)) if (out / "manifest.jsonl").exists() else 0
            current = victim_client._request("GET", "/queue")["queue_running"]
            if current and done >= 2:
                running = current[0][1]
            else:
                time.sleep(0.05)
        assert running, "the victim never ran a job"
        os.killpg(victim.process.pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=900)
        assert process.returncode == 0, stderr[-3000:]
        assert "stopped answering" in stderr
        entries = manifest(out)
        assert Counter(e["job"] for e in entries) == Counter({f"shot-{i:02d}": 1 for i in range(12)})
        assert {e["status"] for e in entries} == {"done"}
        assert running not in {e["prompt_id"] for e in entries}  # the killed run was redone elsewhere
        for entry in entries:
            files = list((out / entry["job"]).iterdir())
            assert len(files) == 1 and frame_count(files[0]) == 60
    finally:
        survivor.stop()
        victim.stop()


def test_resume_after_ctrl_c_runs_only_unfinished_jobs(two_servers: list[ComfyServer], tmp_path: Path) -> None:
    server = two_servers[0]
    jobs = write_jobs(tmp_path, [job(i, frames=30) for i in range(8)])
    out = tmp_path / "out"
    # SIGINT back to its default in the child: a shell starts background jobs (CI's too) with it
    # ignored, and Python then never raises KeyboardInterrupt. A user's Ctrl-C reaches a foreground run.
    process = subprocess.Popen(batch_command([server], jobs, out, "--per-server", "2"), cwd=ROOT, env=BATCH_ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if (out / "manifest.jsonl").exists() and len(manifest(out)) >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    first = manifest(out)
    done_first = {e["job"] for e in first if e["status"] == "done"}
    assert 3 <= len(done_first) < 8
    assert {e["status"] for e in first} <= {"done", "cancelled"}
    queue = ComfyClient(server.url)._request("GET", "/queue")
    assert queue["queue_pending"] == []  # our queued prompts were deleted

    result = subprocess.run(batch_command([server], jobs, out, "--resume"), cwd=ROOT, env=BATCH_ENV,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    second = manifest(out)[len(first):]
    assert {e["job"] for e in second} == {f"shot-{i:02d}" for i in range(8)} - done_first
    assert {e["status"] for e in second} == {"done"}
    assert len({e["run"] for e in second}) == 1 and second[0]["run"] != first[0]["run"]
    refused = subprocess.run(batch_command([server], jobs, out), cwd=ROOT, env=BATCH_ENV, capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 2 and "--resume" in refused.stderr


def test_a_prompt_that_lands_after_ctrl_c_is_withdrawn(two_servers: list[ComfyServer], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while a POST /prompt is on its way: the prompt lands after cancel() ran and must not stay queued."""
    server = two_servers[1]
    client = ComfyClient(server.url)
    workflow = load_workflow(WORKFLOW.name)
    blocker = json.loads(json.dumps(workflow))  # keeps the server busy, so ours would wait in the queue
    for node in blocker.values():
        if node["class_type"] == "TTM_ImageToMotion":
            node["inputs"]["num_frames"] = 400
        if node["class_type"] == "TTM_VideoCombine":
            node["inputs"]["filename_prefix"] = f"ttm/blocker_{time.monotonic_ns()}"
    blocker_id = client.queue(blocker)
    jobs, errors = validate_jobs(read_jobs(write_jobs(tmp_path, [job(0)])), workflow, client.object_info(), tmp_path)
    assert jobs and not errors
    runner = batch_runner.BatchRunner([server.url], workflow, jobs, tmp_path / "out", per_server=1)
    sent: list[str | None] = []

    class CancelledInFlight(ComfyClient):
        def queue(self, prompt, prompt_id=None):  # the user's Ctrl-C reaches cancel() while this POST is on its way
            runner.cancel()
            sent.append(prompt_id)
            return super().queue(prompt, prompt_id)

    monkeypatch.setattr(batch_runner, "ComfyClient", CancelledInFlight)
    try:
        outcomes = runner.run()
        assert [o.status for o in outcomes] == ["cancelled"] and len(sent) == 1 and sent[0]
        queue = client._request("GET", "/queue")
        assert sent[0] not in {item[1] for item in queue["queue_pending"] + queue["queue_running"]}
    finally:
        client.interrupt(blocker_id)
        client.wait(blocker_id, timeout=120)
    time.sleep(0.5)
    assert client.history(sent[0]) is None  # never ran
    assert not any(client._request("GET", "/queue").values())



def test_a_reused_id_is_reported_and_never_reruns_the_first_job_on_resume(two_servers: list[ComfyServer],
                                                                          tmp_path: Path) -> None:
    """Line 3 reuses line 1's id: line 3 is refused (every run), line 1 renders once and --resume leaves it alone."""
    jobs = write_jobs(tmp_path, [job(1), job(2), job(3, id="shot-01")])
    out = tmp_path / "out"
    duplicate = "line 3: the id 'shot-01' is used twice (line 1 has it too). Fix: give every job a unique id"
    result = subprocess.run(batch_command(two_servers, jobs, out), cwd=ROOT, env=BATCH_ENV, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 1, result.stderr[-3000:]
    assert duplicate in result.stderr
    first = manifest(out)
    assert sorted((e["job"], e["line"], e["status"]) for e in first) == \
        [("shot-01", 1, "done"), ("shot-01", 3, "failed"), ("shot-02", 2, "done")]
    assert next(e for e in first if e["line"] == 3)["error"] == duplicate
    rendered = {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in (out / "shot-01").iterdir()}
    assert len(rendered) == 1

    for _ in range(2):  # the second resume reads a manifest that already has two refusals of line 3
        again = subprocess.run(batch_command(two_servers, jobs, out, "--resume"), cwd=ROOT, env=BATCH_ENV,
                               capture_output=True, text=True, timeout=900)
        assert again.returncode == 1, again.stderr[-3000:]  # the duplicate is still an error
        assert duplicate in again.stderr and "2 skipped as already done" in again.stderr, again.stderr[-3000:]
        entries = manifest(out)
        added, first = entries[len(first):], entries
        assert [(e["job"], e["line"], e["status"]) for e in added] == [("shot-01", 3, "failed")]
        assert {path.name: (path.stat().st_mtime_ns, path.read_bytes())
                for path in (out / "shot-01").iterdir()} == rendered  # line 1's render untouched


@pytest.mark.parametrize(("job_id", "accepted"), [
    ("unicode-고양이", "unicode-고양이"), ("हिन्दी-शेर", "हिन्दी-शेर"), ("e\u0301te", "\u00e9te"), ("Ω.2_b-c", "Ω.2_b-c"),
    (7, "7"), ("x" * 100, "x" * 100)])
def test_ids_may_be_any_script(job_id: object, accepted: str) -> None:
    assert check_id(job_id, 1) == accepted  # NFC: an accent typed as a combining mark is one letter


@pytest.mark.parametrize(("job_id", "problem", "suggestion"), [
    ("a/b", "it contains the path separator '/'", "a-b"),
    ("a\\b", "it contains the path separator '\\\\'", "a-b"),
    ("../up", "it starts with '.'", "up"),
    (".hidden", "it starts with '.'", "hidden"),
    ("my shot", "it contains whitespace (space)", "my-shot"),
    ("tab\there", "it contains whitespace (U+0009)", "tab-here"),
    ("bell\x07", "it contains the control or format character U+0007", "bell"),
    ("rtl\u202eevil", "it contains the control or format character U+202E", "rtl-evil"),
    ("-x", "it starts with '-'", "x"),
    ("", "it is empty", None),
    ("x" * 101, "it has 101 characters, more than 100", "x" * 100),
    ("고" * 90, "it is 270 bytes in UTF-8, more than a folder name holds (255)", "고" * 85),
])
def test_bad_ids_say_what_is_wrong_and_what_is_allowed(job_id: str, problem: str, suggestion: str | None) -> None:
    with pytest.raises(JobError) as caught:
        check_id(job_id, 4)
    message = str(caught.value)
    assert message.startswith(f"line 4: id {job_id!r} cannot be a job id: {problem}. Fix: use 1-100 letters (any "
                              "script, with their accents) or digits and '.', '_', '-', starting with a letter or "
                              "digit, e.g. 'shot-01' or 'unicode-고양이'"), message
    assert message.endswith(f"; this one could be {suggestion!r}" if suggestion else "'unicode-고양이'"), message


def test_unicode_ids_and_file_names_end_to_end(two_servers: list[ComfyServer], tmp_path: Path) -> None:
    """Ids in any script name the local folders; the servers get ASCII upload names and prefixes, and load
    exactly the files the job named (an image and a mask with the same file name in two folders)."""
    shots = tmp_path / "샷"
    (shots / "a").mkdir(parents=True)
    (shots / "b").mkdir()
    image, left, right = shots / "a" / '고양이 "cat".png', shots / "b" / '고양이 "cat".png', shots / "b" / "오른쪽.png"
    shutil.copy(EXAMPLES / "ttm_coins.png", image)
    shutil.copy(EXAMPLES / "ttm_coins_mask_left.png", left)
    shutil.copy(EXAMPLES / "ttm_coins_mask_right.png", right)
    jobs = write_jobs(tmp_path, [job(0, id="unicode-고양이", image=str(image), masks=[str(left), str(right)]),
                                 job(1, id="हिन्दी-शेर"), job(2, id="e\u0301te"), job(3, id="a/b")])
    out = tmp_path / "out"
    result = subprocess.run(batch_command(two_servers, jobs, out), cwd=ROOT, env=BATCH_ENV, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 1, result.stderr[-3000:]  # line 4 is refused, the rest render
    assert "line 4: id 'a/b' cannot be a job id: it contains the path separator '/'. Fix: use 1-100 letters" \
        in result.stderr
    entries = {e["job"]: e for e in manifest(out)}
    assert entries["a/b"]["status"] == "failed" and entries["a/b"]["line"] == 4
    rendered = {"unicode-고양이", "हिन्दी-शेर", "\u00e9te"}
    assert {job_id for job_id, e in entries.items() if e["status"] == "done"} == rendered
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(rendered)
    for job_id in rendered:
        (video,) = entries[job_id]["files"]
        assert Path(video).parent == Path(job_id) and frame_count(out / video) == 9

    entry = entries["unicode-고양이"]
    server = next(s for s in two_servers if s.url == entry["server"])
    prompt = ComfyClient(server.url).history(entry["prompt_id"])["prompt"][2]
    loads = [(node["class_type"], node["inputs"]["image"]) for node in prompt.values()
             if node["class_type"] in ("LoadImage", "LoadImageMask")]
    assert len(loads) == 3 and all(name.isascii() for _, name in loads), loads
    on_server = {kind: sorted((server.base / "input" / name).read_bytes() for k, name in loads if k == kind)
                 for kind in ("LoadImage", "LoadImageMask")}
    assert on_server == {"LoadImage": [image.read_bytes()],
                         "LoadImageMask": sorted([left.read_bytes(), right.read_bytes()])}
    (prefix,) = {node["inputs"]["filename_prefix"] for node in prompt.values()
                 if "filename_prefix" in node["inputs"]}
    assert prefix.isascii() and prefix.endswith("/unicode-9282859e14_a1"), prefix
    assert Path(entry["files"][0]).name.isascii()

    again = subprocess.run(batch_command(two_servers, jobs, out, "--resume"), cwd=ROOT, env=BATCH_ENV,
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 1 and "3 skipped as already done" in again.stderr, again.stderr[-3000:]
