"""Every command the README shows, run the way the README writes it (from the repository root).

``test_every_readme_command_has_a_test`` reads the README's shell blocks and command spans and fails
when one is not covered here, so a command added to the README needs a test before it lands.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import av
import pytest

from common import ROOT
from tools.comfy_harness import free_port
from ttm_batch.client import ComfyClient

pytestmark = pytest.mark.server
README = ROOT / "README.md"
MAKE = ["make", "--no-print-directory"]

# README command (as a regular expression over the command with its continuation lines joined) -> the test
# that runs it, or why it cannot run here.
COVERED: dict[str, str] = {
    r"make demo": "test_make_demo_prints_the_mp4_it_wrote",
    r"make test": "test_make_test_lints_then_runs_pytest",
    r"make test-fast": "test_make_test_fast_is_the_library_lane",
    r"make lint": "test_make_test_lints_then_runs_pytest (make test runs make lint)",
    r"make setup": "every make target here runs it first",
    r"make serve PORT=\d+": "test_make_serve_as_written_answers_and_stops_on_sigterm",
    r"make bench-(attention|stage2|native|encode|flow-track|track-memory|plan|modelfree)( OUT=\S+)?":
        "test_benchmark_targets_at_a_tiny_size",
    r"python -m benchmarks <name> --help": "test_every_benchmark_says_its_options",
    r"python -m benchmarks gpu --size tiny": "tests/core/test_gpu_bench.py runs it as written (in process)",
    r"python -m benchmarks gpu": "needs a GPU (--size real, the default); tests/core/test_gpu_bench.py runs the "
                                 "same command with --size tiny",
    r"ttm-batch --server \S+( --server \S+)* --workflow \S+ --jobs jobs\.jsonl --out renders/":
        "test_ttm_batch_as_in_the_readme",
    r"pip install \./batch": "tests/batch/test_packaging.py (a fresh venv)",
    r"ttm-eval generate-set bench/ --count 2 --seed 0": "test_ttm_eval_as_in_the_readme",
    r"ttm-batch --server \S+ --workflow workflows/ttm_saved_trajectory_warp_api\.json --jobs bench/jobs\.jsonl "
    r"--out renders/warp/": "test_ttm_eval_as_in_the_readme",
    r"ttm-eval score --set bench/ --videos warp=renders/warp --videos reference=bench/reference --out results/":
        "test_ttm_eval_as_in_the_readme",
    r"ttm-data build videos/ --out data/shards --masks masks/ --workers 4": "test_training_as_in_the_readme",
    r"ttm-train stage2 --config configs/train/stage2_wan22_ti2v\.yaml --set model\.path=\S+":
        "test_training_as_in_the_readme (the model path replaced by a tiny TI2V folder)",
    r"accelerate launch --config_file configs/train/ddp\.yaml -m ttm_core\.train\.train_cli stage2 --config \S+":
        "needs 8 GPUs; tests/core/test_train_stage2.py runs the same launcher and trainer with "
        "configs/train/cpu_gloo_2proc.yaml (2 CPU processes over gloo)",
    r'curl -X POST http://127\.0\.0\.1:8188/prompt .*': "test_the_curl_line",
    r"<ComfyUI's python> -m pip install -r ComfyUI-Through-The-Mask/requirements\.txt":
        "test_installing_the_requirements_leaves_torch_alone",
    r"python -m pip install \"setuptools>=70\.1\"": "tools/setup_env.sh runs the same command",
    r"SAM2_BUILD_CUDA=0 python -m pip install --no-deps --no-build-isolation --require-hashes -r \S+":
        "tools/setup_env.sh runs the same command",
    r"cd ComfyUI/custom_nodes": "part of installing into a ComfyUI (the clone below)",
    r"git clone https://github\.com/\S+": "needs GitHub, which this machine cannot reach; the tests use this clone",
    r"TTM_COMFYUI_DIR=\S+ TTM_COMFYUI_PYTHON=\S+ make test":
        "make test against another ComfyUI: run by hand with ComfyUI 0.8.0 (README, Supported ComfyUI)",
    r"\.venv/bin/python tools/make_ui_workflow\.py \S+( --note .*)?( --frontend \S+)?":
        "tests/browser: the UI twins match their API twins node for node",
    r"\.venv/bin/python tools/golden\.py.*": "tests/server/test_golden.py (the same runs, compared)",
    r"\.venv/bin/python tools/make_example_assets\.py": "regenerates examples/ (scikit-image's coins)",
}


def readme_commands() -> list[str]:
    """Commands in the README's ```bash blocks (comments dropped, continuation lines joined) and in inline
    code spans that start with a command word."""
    text = README.read_text()
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(re.sub(r"\s+", " ", line))
    for span in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S)):
        if re.match(r"(make |ttm-batch |curl |pip install |\.venv/bin/python |python -m )", span):
            commands.append(re.sub(r"\s+", " ", span.strip()))
    return commands


def test_every_readme_command_has_a_test() -> None:
    commands = readme_commands()
    assert "make demo" in commands and "make test" in commands
    uncovered = [c for c in commands if not any(re.fullmatch(p, c) for p in COVERED)]
    assert not uncovered, f"README commands without a test: {uncovered}"


def run_make(*args: str, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([*MAKE, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                            env=env or dict(os.environ))
    assert result.returncode == 0, f"make {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_make_demo_prints_the_mp4_it_wrote() -> None:
    result = run_make("demo")
    video = Path(result.stdout.strip().splitlines()[-1])
    assert video.is_absolute() and video.suffix == ".mp4" and video.is_file()
    assert video.is_relative_to((ROOT / ".comfyui" / "demo" / "output").resolve())
    with av.open(str(video)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 49


def test_make_test_lints_then_runs_pytest() -> None:
    """`make test` exactly, narrowed to one file with the README's PYTEST_ARGS (the whole suite is CI's run)."""
    result = run_make("test", "PYTEST_ARGS=tests/core/test_types.py -q -p no:cacheprovider", timeout=1500)
    out = result.stdout
    assert "All checks passed!" in out  # ruff
    assert re.search(r"Success: no issues found in \d+ source files", out)  # mypy
    assert re.search(r"\d+ passed", out) and "failed" not in out


def test_make_test_fast_is_the_library_lane() -> None:
    result = run_make("test-fast", "PYTEST_ARGS=--collect-only")  # with the target's own -q: one test id a line
    ids = [line for line in result.stdout.splitlines() if "::" in line]
    assert len(ids) > 300
    assert all(i.startswith("tests/core/") for i in ids), [i for i in ids if not i.startswith("tests/core/")][:5]
    slow = subprocess.run([sys.executable, "-m", "pytest", "tests/core", "-m", "slow", "--collect-only", "-q"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    slow_ids = {line for line in slow.stdout.splitlines() if "::" in line}
    assert slow_ids and not slow_ids & set(ids)  # the slow ones stay for make test


def test_make_serve_as_written_answers_and_stops_on_sigterm() -> None:
    """`make serve PORT=...` with its default base folder (relative to the repository, not to ComfyUI's)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "TTM_SERVE_BASE"}
    process = subprocess.Popen([*MAKE, "serve", f"PORT={port}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read().decode(errors="replace")[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/object_info/TTM_VideoCombine", timeout=5) as r:
                    assert b"TTM_VideoCombine" in r.read()
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("make serve did not answer")
        assert (ROOT / ".comfyui" / "serve" / "custom_nodes").is_dir()
        process.send_signal(signal.SIGTERM)  # to make itself, as a service manager would
        assert process.wait(timeout=60) is not None
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/object_info", timeout=5)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def test_benchmark_targets_at_a_tiny_size(tmp_path: Path) -> None:
    """Each benchmark target as the README writes it, with BENCH_ARGS shrinking the case (plumbing only)."""
    runs = {
        "bench-attention": "--grid 2x8x8 --coverage 0.3,0.15 --rounds 1 --threads 1 --no-memory",
        "bench-stage2": "--size 64 --frames 9 --rounds 1 --pipeline-rounds 1 --threads 1 --no-memory",
        "bench-native": "--width 64 --height 64 --frames 5 --rounds 1 --dim 128 --blocks 2",
        "bench-flow-track": "--size 160x128 --frames 10 --rounds 1",
        "bench-track-memory": "--lengths 3,5 --size 64x64 --trackers hf",
        "bench-plan": "--rounds 1 --max-new-tokens 200 --threads 1",
        "bench-modelfree": "--size 96x64 --frames 9 --objects 1,2 --rounds 1 --threads 1",
    }
    for target, args in runs.items():
        out = tmp_path / f"{target}.json"
        run_make(target, f"OUT={out}", f"BENCH_ARGS={args}")
        report = json.loads(out.read_text())
        if target == "bench-attention":
            assert report["results"][0]["tokens"] == 2 * 8 * 8
        elif target == "bench-stage2":
            assert report["video_tokens"] == 3 * 4 * 4 and set(report["results"]) == {"step", "pipeline"}
        elif target == "bench-flow-track":
            assert report["scene"]["frames"] == 10 and report["results"][0]["name"] == "default"
        elif target == "bench-track-memory":
            assert [(r["tracker"], r["way"], r["frames"]) for r in report["runs"]] == [
                ("hf", way, n) for n in (3, 5) for way in ("streamed", "at_once")]
        elif target == "bench-modelfree":
            assert report["size"] == "96x64x9" and [(r["objects"], r["motion"]) for r in report["rows"]] == [
                (n, m) for n in (1, 2) for m in ("translation", "scale_rotation")]
            assert all(r["seconds"]["baseline"] > 0 and r["peak_extra_mib"]["ours"] >= 0 for r in report["rows"])
        elif target == "bench-plan":
            assert report["rounds"] == 1 and set(report["results"]) == {"constrained", "unconstrained"}
        else:
            assert report["tokens"] == 2 * 4 * 4 and {c["case"] for c in report["cases"]} == {
                "patched (strength 1)", "patched (strength 0.5)"}
    encode = run_make("bench-encode", "BENCH_ARGS=--frames 4 --size 64 --json")
    figures = json.loads(encode.stdout.strip().splitlines()[-1])
    assert figures["frames"] == 4 and figures["size"] == 64 and figures["extra_peak_mib"] > 0


def readme_block(after: str, language: str) -> str:
    """The first ``language`` code block after the line containing ``after``."""
    text = README.read_text()
    return re.search(rf"```{language}\n(.*?)```", text[text.index(after):], re.S).group(1)


def test_ttm_batch_as_in_the_readme(comfy_server, tmp_path: Path) -> None:
    """The README's jobs file and command, with the test server's URL (files from examples/)."""
    command = next(c for c in readme_commands() if c.startswith("ttm-batch --server"))
    jobs = readme_block("`jobs.jsonl` — one job per line", "json")
    shots = tmp_path / "shots"
    shots.mkdir()
    for name, source in (("coins.png", "ttm_coins.png"), ("left.png", "ttm_coins_mask_left.png"),
                         ("big.png", "ttm_coins_mask_right.png")):
        shutil.copy(ROOT / "examples" / source, shots / name)
    (tmp_path / "jobs.jsonl").write_text(jobs)
    args = shlex.split(command)
    servers = [i for i, a in enumerate(args) if a == "--server"]
    args = [a for i, a in enumerate(args) if i not in servers and i - 1 not in servers]
    args[1:1] = ["--server", comfy_server.url]
    args = [str(ROOT / a) if a.startswith("workflows/") else a for a in args]
    result = subprocess.run([str(ROOT / ".venv" / "bin" / "ttm-batch"), *args[1:]], cwd=tmp_path,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = [json.loads(line) for line in (tmp_path / "renders" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(e["job"] for e in manifest) == sorted(json.loads(line)["id"] for line in jobs.splitlines())
    assert all(e["status"] == "done" for e in manifest)
    for entry in manifest:
        assert all((tmp_path / "renders" / f).is_file() for f in entry["files"]), entry


def test_ttm_eval_as_in_the_readme(comfy_server, tmp_path: Path) -> None:
    """The README's three ttm-eval lines as written (the test server's URL for the ttm-batch line): a set, its
    warp renders through ttm-batch, and the scores of the renders and of the set's reference videos."""
    starts = ("ttm-eval ", "ttm-batch --server http://127.0.0.1:8188 --workflow workflows/ttm_saved_trajectory")
    lines = [c for c in readme_commands() if c.startswith(starts) and "bench/" in c]
    assert [c.split()[:2] for c in lines] == [["ttm-eval", "generate-set"], ["ttm-batch", "--server"],
                                             ["ttm-eval", "score"]]
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    for line in lines:
        args = shlex.split(line)
        if args[0] == "ttm-batch":
            args[2] = comfy_server.url
            args = [str(ROOT / a) if a.startswith("workflows/") else a for a in args]
        done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert "| warp |" in done.stdout and "| reference |" in done.stdout
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert results["configs"]["warp"]["count"] == 2 and results["configs"]["warp"]["missing"] == []
    for name in ("warp", "reference"):  # the warp moves each object exactly along its trajectory
        assert results["summary"][name]["mean_iou"] > 0.9, results["summary"]
    assert (tmp_path / "results" / "metrics.png").is_file()


def test_the_curl_line(comfy_server) -> None:
    """The README's curl command, with the test server's port."""
    command = next(c for c in readme_commands() if c.startswith("curl -X POST"))
    result = subprocess.run(["bash", "-c", command.replace("127.0.0.1:8188", comfy_server.url.removeprefix(
        "http://"))], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert not answer.get("node_errors"), answer
    done = ComfyClient(comfy_server.url, timeout=60).wait(answer["prompt_id"], timeout=600)
    assert done.status == "success", done.error
    assert any(f.filename.endswith(".mp4") for f in done.files())


def test_installing_the_requirements_leaves_torch_alone() -> None:
    """What the README's install line makes pip do in an environment that already runs ComfyUI: never
    replace torch (it is not requested, and nothing requested needs another one)."""
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--disable-pip-version-check",
                             "--no-input", "-r", str(ROOT / "requirements.txt")], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    would = " ".join(line for line in result.stdout.splitlines() if line.startswith("Would install"))
    assert not re.search(r"\btorch(vision|audio)?-\d", would), would


@pytest.mark.parametrize("name", ["attention", "stage2", "native", "encode", "plan", "flow-track", "track-memory",
                                  "modelfree", "gpu", "eval"])
def test_every_benchmark_says_its_options(name: str) -> None:
    result = subprocess.run([sys.executable, "-m", "benchmarks", name, "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"python -m benchmarks {name}" in result.stdout and "--" in result.stdout


def test_training_as_in_the_readme(tmp_path: Path) -> None:
    """The README's ttm-data command in a folder of procedural videos with known first masks, then its
    ttm-train command on the shards it wrote, with the model path (and the run's size) set to a tiny
    random-weight Wan 2.2 TI2V-5B folder: the checkpoint it writes loads in the trained Stage 2."""
    from procedural_clips import write_clips
    from tiny_diffusers import save_tiny
    from ttm_core.stage2.trained import load_trained

    build = next(c for c in readme_commands() if c.startswith("ttm-data build"))
    train = next(c for c in readme_commands() if c.startswith("ttm-train stage2"))
    write_clips(tmp_path, ["translation", "crossing"], height=64, width=64, frames=9)
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    small = ["--size", "64x64", "--frames", "9", "--min-frames", "9", "--no-progress"]
    done = subprocess.run([*shlex.split(build), *small],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    shards = sorted((tmp_path / "data" / "shards").glob("*.tar"))
    assert shards, done.stderr[-2000:]

    model = save_tiny("wan2.2-ti2v-5b", tmp_path / "models" / "tiny-ti2v")
    words = shlex.split(train)
    words = [f"model.path={model}" if w.startswith("model.path=") else w for w in words]
    sets = {"data.shards": f"[{tmp_path / 'data' / 'shards'}]", "data.size": "[64, 64]", "data.frames": "9",
            "data.batch_size": "1", "data.workers": "0", "masked_blocks": "1", "steps": "2",
            "schedule.warmup_steps": "0", "precision": "no", "model.dtype": "fp32", "gradient_checkpointing": "false",
            "validation.every": "0", "logging.tensorboard": "false", "checkpoint.every": "2",
            "output_dir": str(tmp_path / "runs" / "readme")}
    for key, value in sets.items():
        words += ["--set", f"{key}={value}"]
    done = subprocess.run(words, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    checkpoint = tmp_path / "runs" / "readme" / "ttm_stage2_wan2.2-ti2v-5b.safetensors"
    weights = load_trained(checkpoint)
    assert weights.config.stage == 2 and weights.config.step == 2 and weights.config.variant == "wan2.2-ti2v-5b"
    assert weights.config.num_blocks == 1 and any(k.startswith("layers.blocks.0.masked_self") for k in weights.tensors)
