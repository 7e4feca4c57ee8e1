"""``ttm-data build`` on procedural videos with known masks -> shards -> reader (issue 13, item 1).

Clips are the flow tracker's procedural scenes (tests/support/procedural_clips.py) at 128x96, 17 frames,
8 fps, with their first-frame label PNGs and captions; the weights-free flow tracker tracks them, so
nothing here needs model weights (the caption path with the tiny random models is the slow test at
the end). Shards are compared BYTE for byte (same inputs and settings -> identical tar files, whether
made in this process, in a process pool or on a local Ray instance, in one run or resumed).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from procedural_clips import ProceduralClip, write_clip, write_clips, write_garbage_video, write_label_png
from tiny_models import TinyModels
from ttm_core.errors import TTMInputError
from ttm_core.train.build import BuildReport, DataSettings, build_dataset, list_inputs
from ttm_core.train.clips import ClipInput, ClipRecord, ClipSkipped, load_models, process_clip
from ttm_core.train.data_cli import main as data_main
from ttm_core.train.reader import ShardReader, family_sizes
from ttm_core.train.shards import MANIFEST, decode_labels, encode_labels, read_shard_members, write_shard

HEIGHT, WIDTH, FRAMES = 96, 128, 17
SETTINGS = DataSettings(fps=8.0, height=HEIGHT, width=WIDTH, frames=FRAMES, min_frames=9, clips_per_shard=2)
SCENES = ["translation", "crossing", "several"]


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("shard-*.tar"))}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ProceduralClip]]:
    root = tmp_path_factory.mktemp("videos")
    return root, write_clips(root, SCENES, height=HEIGHT, width=WIDTH, frames=FRAMES)


@pytest.fixture(scope="module")
def built(source: tuple[Path, list[ProceduralClip]], tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[Path, BuildReport, list[ClipInput]]:
    root, _ = source
    inputs = list_inputs(root / "videos", SETTINGS, masks=root / "masks")
    out = tmp_path_factory.mktemp("shards")
    return out, build_dataset(inputs, out, SETTINGS), inputs


def ious(predicted: np.ndarray, truth: np.ndarray, object_id: int) -> float:
    p, g = predicted == object_id, truth == object_id
    return float((p & g).sum() / max(1, (p | g).sum()))


def test_label_videos_match_the_known_masks_and_prompts_are_present(
        source: tuple[Path, list[ProceduralClip]], built: tuple[Path, BuildReport, list[ClipInput]]) -> None:
    _, clips = source
    out, report, _ = built
    assert (report.total, report.processed, report.done, report.skipped) == (3, 3, 3, {})
    assert report.shards == ("shard-000000.tar", "shard-000001.tar")
    reader = ShardReader(out, HEIGHT, WIDTH, FRAMES, shuffle=False, random_window=False)
    samples = list(reader)
    assert len(samples) == 3
    for sample, clip in zip(samples, clips):  # keys sort like the clip names
        assert sample.key.startswith(clip.name)
        assert sample.frames.shape == (FRAMES, HEIGHT, WIDTH, 3) and sample.labels.shape == (FRAMES, HEIGHT, WIDTH)
        labels = sample.labels.numpy()
        count = int(clip.labels.max())
        assert sample.num_objects == count and sample.names == tuple(f"object {i + 1}" for i in range(count))
        for object_id in range(1, count + 1):
            assert ious(labels, clip.labels, object_id) >= 0.9, (clip.name, object_id)
        caption = clip.caption.read_text().strip()
        assert sample.global_prompt == caption and sample.motion_prompt == caption
        assert all(p == caption for p in sample.local_prompts) and sample.fps == 8.0
        assert float(sample.frames.mean()) > 0.2  # real pictures, not black
    members = dict(read_shard_members(out / "shard-000000.tar"))
    meta = json.loads(next(iter(members.values()))["json"])
    assert set(meta) >= {"global_prompt", "motion_prompt", "local_prompts", "names", "boxes", "fps", "source"}
    assert meta["source"].endswith("clip0_translation.mp4") and len(meta["boxes"][0]) == 4


def test_label_png_round_trips_exactly() -> None:
    labels = np.random.default_rng(0).integers(0, 9, (5, 12, 10), dtype=np.uint8)
    assert np.array_equal(decode_labels(encode_labels(labels), 5), labels)


def test_rerun_skips_done_clips_and_leaves_shards_unchanged(built: tuple[Path, BuildReport, list[ClipInput]]) -> None:
    out, _, inputs = built
    before = digests(out)
    again = build_dataset(inputs, out, SETTINGS)
    assert (again.already, again.processed, again.shards) == (3, 0, ())
    assert digests(out) == before


def test_resumed_build_and_process_pool_give_identical_shards(
        built: tuple[Path, BuildReport, list[ClipInput]], tmp_path: Path) -> None:
    out, _, inputs = built
    resumed = tmp_path / "resumed"
    first = build_dataset(inputs[:2], resumed, SETTINGS)  # as if stopped after two clips
    second = build_dataset(inputs, resumed, SETTINGS)
    assert (first.processed, second.already, second.processed) == (2, 2, 1)
    assert digests(resumed) == digests(out)
    pool = tmp_path / "pool"
    report = build_dataset(inputs, pool, DataSettings(**{**SETTINGS.__dict__, "workers": 2}))
    assert report.done == 3 and digests(pool) == digests(out)


@pytest.mark.slow
def test_local_ray_run_gives_the_same_shards(built: tuple[Path, BuildReport, list[ClipInput]], tmp_path: Path) -> None:
    out, _, inputs = built
    settings = DataSettings(**{**SETTINGS.__dict__, "workers": 2, "ray_address": "local"})
    report = build_dataset(inputs, tmp_path / "ray", settings)
    assert report.done == 3
    assert digests(tmp_path / "ray") == digests(out)  # byte-identical tars


def test_crash_mid_shard_leaves_no_half_shard(built: tuple[Path, BuildReport, list[ClipInput]],
                                              tmp_path: Path) -> None:
    out, _, _ = built
    good = [{"__key__": key, **members} for key, members in read_shard_members(out / "shard-000000.tar")]
    bad = {"__key__": "broken", "mp4": 12345}  # not bytes: the writer raises after the good sample
    target = tmp_path / "shard-000000.tar"
    with pytest.raises(ValueError, match="bytes"):
        write_shard(target, [good[0], bad])
    assert list(tmp_path.iterdir()) == []
    # a killed build leaves <shard>.partial; the next build removes it and writes the shard whole
    (tmp_path / "shard-000000.tar.partial").write_bytes(b"half a shard")
    assert write_shard(target, good) == 2
    assert target.is_file() and hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(
        (out / "shard-000000.tar").read_bytes()).digest()


def test_a_shard_the_manifest_never_recorded_is_removed_and_its_clips_rebuilt_once(
        built: tuple[Path, BuildReport, list[ClipInput]], tmp_path: Path) -> None:
    """A build killed after renaming a shard into place but before appending its clips to the manifest:
    the rerun removes the orphan and writes those clips once (a reader globbing the folder must not see
    them twice)."""
    out, _, inputs = built
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    manifest = copy / MANIFEST
    lines = manifest.read_text().splitlines()
    last_shard = json.loads(lines[-1])["shard"]
    kept = [line for line in lines if json.loads(line)["shard"] != last_shard]
    manifest.write_text("".join(line + "\n" for line in kept))
    report = build_dataset(inputs, copy, SETTINGS)
    assert report.processed == len(lines) - len(kept)
    keys = [key for shard in sorted(copy.glob("shard-*.tar")) for key, _ in read_shard_members(shard)]
    assert sorted(keys) == sorted(json.loads(line)["key"] for line in lines if json.loads(line)["status"] == "done")


def test_bad_videos_are_skipped_with_the_file_and_the_fix(tmp_path: Path) -> None:
    clip = write_clip(tmp_path, "good", "translation", height=HEIGHT, width=WIDTH, frames=FRAMES)
    garbage = write_garbage_video(tmp_path / "videos" / "broken.mp4")
    garbage.with_suffix(".txt").write_text("a caption")
    shutil.copy(clip.masks, tmp_path / "masks" / "broken.png")
    short = write_clip(tmp_path, "short", "translation", height=HEIGHT, width=WIDTH, frames=5)
    empty = write_clip(tmp_path, "empty", "translation", height=HEIGHT, width=WIDTH, frames=FRAMES)
    write_label_png(empty.masks, np.zeros((HEIGHT, WIDTH), np.uint8))
    static = write_clip(tmp_path, "static", "rotation", height=HEIGHT, width=WIDTH, frames=FRAMES)

    def run(video: Path, masks: Path, settings: DataSettings = SETTINGS) -> ClipSkipped:
        outcome = process_clip(ClipInput("k", str(video), "a caption", str(masks)), settings)
        assert isinstance(outcome, ClipSkipped), outcome
        assert str(video if outcome.reason != "no-objects" else masks) in outcome.message
        return outcome

    broken = run(garbage, clip.masks)
    assert broken.reason == "undecodable" and "re-encode" in broken.message
    too_short = run(short.video, short.masks)
    assert too_short.reason == "too-short" and "5 frames" in too_short.message and "--min-frames" in too_short.message
    nothing = run(empty.video, empty.masks)
    assert nothing.reason == "no-objects" and "paint the objects" in nothing.message
    turning = run(static.video, static.masks)  # a bar turning in place: its centroid does not travel
    assert turning.reason == "static" and "--min-motion" in turning.message
    tiny = run(clip.video, clip.masks, DataSettings(**{**SETTINGS.__dict__, "min_area": 0.5, "max_area": 0.9}))
    assert tiny.reason == "filtered" and "relax the filters" in tiny.message
    slow = run(clip.video, clip.masks, DataSettings(**{**SETTINGS.__dict__, "fps": 24.0}))
    assert slow.reason == "fps-too-low" and "8 fps" in slow.message
    # the build records skips in the manifest and goes on
    out = tmp_path / "out"
    report = build_dataset(list_inputs(tmp_path / "videos", SETTINGS, masks=tmp_path / "masks"), out, SETTINGS)
    assert report.done == 1 and report.skipped == {"undecodable": 1, "too-short": 1, "no-objects": 1, "static": 1}
    lines = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    assert sorted(e["reason"] for e in lines if e["status"] == "skipped") == [
        "no-objects", "static", "too-short", "undecodable"]


def test_missing_captions_masks_and_bad_settings_are_refused_before_any_work(tmp_path: Path) -> None:
    clip = write_clip(tmp_path, "a", "translation", height=HEIGHT, width=WIDTH, frames=FRAMES)
    clip.caption.unlink()
    with pytest.raises(TTMInputError, match=r"no caption: .*a\.mp4.*VIDEO\.txt.*--captions"):
        list_inputs(tmp_path / "videos", SETTINGS, masks=tmp_path / "masks")
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"video": "a.mp4", "caption": "a blob slides"}) + "\n")
    inputs = list_inputs(tmp_path / "videos", SETTINGS, captions=captions, masks=tmp_path / "masks")
    assert inputs[0].caption == "a blob slides"
    with pytest.raises(TTMInputError, match=r"no first-frame mask: .*a\.mp4.*--masks"):
        list_inputs(tmp_path / "videos", SETTINGS, captions=captions)
    with pytest.raises(TTMInputError, match=r"llm.*--llm DIR --detector DIR --sam2 PATH"):
        DataSettings(objects_from="caption")
    with pytest.raises(TTMInputError, match="odd side"):
        DataSettings(height=97)
    out = tmp_path / "out"
    build_dataset(inputs, out, SETTINGS)
    with pytest.raises(TTMInputError, match=r"other settings \(fps: 8.0 -> 4.0\).*new --out"):
        build_dataset(inputs, out, DataSettings(**{**SETTINGS.__dict__, "fps": 4.0}))


def test_family_sizes() -> None:
    assert family_sizes("wan2.1-i2v") == (480, 832, 81)
    assert family_sizes("wan2.1-i2v", 500, 850, 50) == (496, 848, 49)
    assert family_sizes("wan2.2-ti2v-5b", 500, 900, 50) == (480, 896, 49)  # 16x VAE: 32 px per token
    assert family_sizes("cogvideox-1.5-i2v", 300, 400, 20) == (288, 400, 17)
    with pytest.raises(TTMInputError, match="only runs at 720x480"):
        family_sizes("cogvideox-1.0-i2v", 256, 256, 17)
    with pytest.raises(TTMInputError, match=r"unknown model family 'wan3'.*wan2\.1-i2v"):
        family_sizes("wan3")


def test_reader_order_ranks_skip_and_sizes(built: tuple[Path, BuildReport, list[ClipInput]]) -> None:
    out, _, _ = built
    full = ShardReader(out, 48, 64, 9, seed=3)
    keys = [s.key for s in full]
    assert sorted(keys) == sorted(e.key for e in full.entries) and len(keys) == 3
    assert [s.key for s in ShardReader(out, 48, 64, 9, seed=3)] == keys  # same seed, same order
    orders = {tuple(ShardReader(out, 48, 64, 9, seed=s).order()) for s in range(6)}
    assert len(orders) > 1  # the seed shuffles
    assert [s.key for s in ShardReader(out, 48, 64, 9, seed=3, skip=2)] == keys[2:]
    ranks = [[s.key for s in ShardReader(out, 48, 64, 9, seed=3, rank=r, world_size=2)] for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 1 and set(ranks[0]).isdisjoint(ranks[1])
    sample = next(iter(full))
    assert sample.frames.shape == (9, 48, 64, 3) and sample.frames.dtype == torch.float32
    assert sample.labels.shape == (9, 48, 64) and set(sample.labels.unique().tolist()) <= set(
        range(sample.num_objects + 1))
    windows = {next(iter(ShardReader(out, 48, 64, 9, seed=s, shuffle=False))).frames[0].sum().item() for s in range(4)}
    assert len(windows) > 1  # the window start is seeded
    loader = torch.utils.data.DataLoader(ShardReader(out, 48, 64, 9, seed=3), batch_size=None)
    assert [s.key for s in loader] == keys
    with pytest.raises(TTMInputError, match="neither a shard nor a folder holding shard-"):
        ShardReader(out / "nothing", 48, 64, 9)


def test_cli_build_inspect_and_errors(source: tuple[Path, list[ProceduralClip]], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = source
    videos = tmp_path / "videos"
    shutil.copytree(root / "videos", videos)
    for extra in videos.glob("clip[12]_*"):
        extra.unlink()
    out = tmp_path / "out"
    code = data_main(["build", str(videos), "--out", str(out), "--masks", str(root / "masks"), "--fps", "8",
                      "--size", f"{HEIGHT}x{WIDTH}", "--frames", str(FRAMES), "--min-frames", "9", "--no-progress"])
    assert code == 0
    assert "1 clips listed, 0 finished before, 1 made now: 1 kept in 1 new shard(s)" in capsys.readouterr().out
    assert data_main(["inspect", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["shards"], summary["clips"], summary["objects_per_clip"]) == (1, 1, {"1": 1})
    assert data_main(["build", str(tmp_path / "absent"), "--out", str(out), "--masks", str(root / "masks")]) == 2
    assert "absent does not exist" in capsys.readouterr().err
    assert data_main(["build", str(videos), "--out", str(out)]) == 2  # caption path without models
    assert "--llm DIR" in capsys.readouterr().err


@pytest.mark.slow
def test_caption_path_runs_llm_detector_and_sam2_with_tiny_random_models(tiny_models: TinyModels,
                                                                         tmp_path: Path) -> None:
    """caption -> tiny LLM (constrained decoding: well-formed, meaningless) -> tiny Grounding DINO -> tiny SAM 2
    -> flow tracker. Random weights find a random region that hardly moves: with the motion filter the clip is
    skipped as static (naming the file and the fix), without it the clip is kept with the LLM's prompts."""
    clip = write_clip(tmp_path, "a", "translation", height=HEIGHT, width=WIDTH, frames=FRAMES)
    settings = DataSettings(**{**SETTINGS.__dict__, "objects_from": "caption", "llm": str(tiny_models.llm),
                               "detector": str(tiny_models.detector), "sam2": str(tiny_models.meta_pt)})
    inputs = list_inputs(tmp_path / "videos", settings)
    report = build_dataset(inputs, tmp_path / "out", settings)
    assert (report.done, report.skipped) == (0, {"static": 1})
    entry = json.loads((tmp_path / "out" / MANIFEST).read_text().splitlines()[0])
    assert str(clip.video) in entry["message"] and "--min-motion" in entry["message"]
    moving_or_not = DataSettings(**{**settings.__dict__, "min_motion": 0.0})
    models = load_models(moving_or_not)
    kept = process_clip(inputs[0], moving_or_not, models)
    assert isinstance(kept, ClipRecord) and len(kept.names) == 1 and kept.names[0].strip()
    assert kept.global_prompt == clip.caption.read_text().strip() and kept.labels.max() == 1
    named = ClipInput(inputs[0].key, inputs[0].video, inputs[0].caption, "", "a blob slides right",
                      (("blob", "a textured blob sliding right"),))  # objects given: no LLM, detector + SAM 2 only
    found = process_clip(named, moving_or_not, models)
    assert isinstance(found, ClipRecord)
    assert (found.names, found.motion_prompt, found.local_prompts) == (
        ("blob",), "a blob slides right", ("a textured blob sliding right",))
