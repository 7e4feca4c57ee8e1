"""Peak extra memory of tracking objects through clips of growing length: streamed vs all-at-once.

Issue 11 asks that tracking memory grow only by the label video. Each tracker follows two objects
through an mp4 of N frames, measured in a fresh process per (tracker, way, N) so one run cannot
leave memory to the next:

* ``streamed`` - what Track Objects does: ``VideoFrames`` decodes one frame at a time, Meta's
  predictor reads lazily resized frames, transformers' video models run in streaming mode, and per-
  frame memory older than the memory-attention window is dropped (``ttm_core.segment.track``);
* ``at_once`` - the way before: every frame decoded into an IMAGE tensor, SAM2's state holding all
  frames at model size (Meta ``init_state`` layout; transformers ``init_video_session(video=...)``),
  and every frame's outputs kept.

Printed per tracker: extra peak MiB at each N for both ways, the label video's MiB, and the growth
per added frame against the label video's bytes per frame (1.0 = grows only by the labels).
The tiny random-weight models keep their real image sizes where it matters (the Meta SAM2 at
1024 px like Meta's checkpoints); absolute MiB of real models are larger, the slopes are the point.
Run: make bench-track-memory (python -m benchmarks track-memory --lengths 24,48,96 --size 240x416)
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "tests" / "support"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from benchmarks import write_json  # noqa: E402

LOG = logging.getLogger(__name__)

TRACKERS = ("meta", "hf", "sam3")
WAYS = ("streamed", "at_once")


def _scene(frames: int, height: int, width: int):
    """Float frames [T, H, W, 3] of two squares moving apart, and their objects."""
    import torch

    from ttm_core.types import ObjectPrompt, Objects, Prompts

    video = torch.full((frames, height, width, 3), 0.1)
    side = max(8, min(height, width) // 4)
    masks = torch.zeros(2, height, width)
    for t in range(frames):
        x = (t * 3) % max(1, width - side)
        video[t, 10:10 + side, x:x + side] = torch.tensor([1.0, 0.2, 0.2])
        video[t, height - side - 10:height - 10, width - side - x:width - x] = torch.tensor([0.2, 0.3, 1.0])
    masks[0, 10:10 + side, 0:side] = 1
    masks[1, height - side - 10:height - 10, width - side:width] = 1
    prompts = Prompts("g", "m", (ObjectPrompt("red", "a"), ObjectPrompt("blue", "b")))
    return video, Objects(prompts, masks)


def _load(kind: str, models: Path):
    from ttm_core.segment.sam2 import load_sam2
    from ttm_core.segment.sam3 import load_sam3_tracker

    if kind == "sam3":
        return load_sam3_tracker(models / "sam3")
    return load_sam2(models / ("meta.pt" if kind == "meta" else "hf_sam2"), video=True)


def _at_once(tracker, video_path: Path, objects) -> None:
    """The previous way: decode everything, give the model every frame at once, keep every output."""
    import torch

    from ttm_core.segment.frames import VideoFrames
    from ttm_core.segment.track import _SequentialImages, frames_state

    source = VideoFrames(str(video_path))
    frames = torch.stack(list(source.frames(range(source.count))))  # the IMAGE batch a VIDEO used to become
    with torch.inference_mode():
        if getattr(tracker, "backend", "") == "meta":
            predictor = tracker.video_model
            lazy = _SequentialImages(iter(frames), source.count, int(predictor.image_size))
            images = torch.stack([lazy[t] for t in range(source.count)])  # init_state's [T, 3, S, S] tensor
            state = frames_state(predictor, iter(frames), source.count, source.size, torch.device("cpu"))
            state["images"] = images
            for i, object_id in enumerate(objects.ids):
                predictor.add_new_mask(state, frame_idx=0, obj_id=int(object_id), mask=objects.binary()[i])
            for _ in predictor.propagate_in_video(state):
                pass
        else:
            processor, model = tracker.video_processor, tracker.video_model
            video = (frames.clamp(0, 1) * 255).round().to(torch.uint8)
            session = processor.init_video_session(video=list(video.numpy()), inference_device="cpu",
                                                   dtype=torch.float32)
            processor.add_inputs_to_inference_session(session, frame_idx=0, obj_ids=list(objects.ids),
                                                      input_masks=list(objects.binary().float()))
            model(inference_session=session, frame_idx=0)
            for output in model.propagate_in_video_iterator(session):
                processor.post_process_masks([output.pred_masks.float()], original_sizes=[list(source.size)],
                                             binarize=False)


def _probe(kind: str, way: str, frames: int, height: int, width: int, models: Path, folder: Path) -> dict:
    """One measurement (runs in its own process)."""
    import torch

    from benchmarks.peak_memory import PeakRSS, fixed_mmap_threshold
    from ttm_core.media import encode_video
    from ttm_core.segment.frames import VideoFrames
    from ttm_core.segment.track import track_objects

    fixed = fixed_mmap_threshold()
    torch.set_num_threads(2)
    video, objects = _scene(frames, height, width)
    [path] = encode_video(video, folder, f"{kind}-{way}-{frames}", "mp4", fps=16.0, quality=95)
    del video
    tracker = _load(kind, models)
    with PeakRSS() as peak:
        if way == "streamed":
            track_objects(tracker, VideoFrames(str(path)), objects)
        else:
            _at_once(tracker, path, objects)
    return {"tracker": kind, "way": way, "frames": frames, "extra_mib": round(peak.extra_kib / 1024, 2),
            "labels_mib": round(frames * height * width / 2**20, 2), "method": peak.method,
            "fixed_mmap_threshold": fixed}


def _build_models(models: Path) -> None:
    from tiny_models import make_hf_sam2, make_hf_sam3, make_meta_sam2

    make_meta_sam2(models / "meta.pt")  # 1024 px, as Meta's checkpoints
    make_hf_sam2(models / "hf_sam2")
    make_hf_sam3(models / "sam3")


def _slope(points: list[tuple[int, float]]) -> float:
    """Least-squares MiB per frame."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    den = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / den if den else 0.0


def format_report(report: dict) -> str:
    lines = [f"tracking peak extra memory, {report['size']} frames, two objects ({report['method']})",
             f"{'tracker':8} {'frames':>6} {'labels MiB':>10} {'streamed MiB':>12} {'at_once MiB':>11} "
             f"{'at_once/streamed':>16}"]
    for kind in report["trackers"]:
        rows = {(r["way"], r["frames"]): r for r in report["runs"] if r["tracker"] == kind}
        for frames in report["lengths"]:
            ours, old = rows[("streamed", frames)], rows[("at_once", frames)]
            lines.append(f"{kind:8} {frames:>6} {ours['labels_mib']:>10.2f} {ours['extra_mib']:>12.2f} "
                         f"{old['extra_mib']:>11.2f} {old['extra_mib'] / max(ours['extra_mib'], 1e-6):>16.2f}")
        growth = report["growth"][kind]
        lines.append(f"{kind:8} growth per frame: streamed {growth['streamed_mib_per_frame']:.3f} MiB, at_once "
                     f"{growth['at_once_mib_per_frame']:.3f} MiB, label video {growth['labels_mib_per_frame']:.3f} "
                     f"MiB -> streamed/labels {growth['streamed_over_labels']:.2f}, at_once/labels "
                     f"{growth['at_once_over_labels']:.2f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks track-memory", description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="24,48,96",
                        help="clip lengths in frames (comma-separated; past the 16-frame memory window)")
    parser.add_argument("--size", default="240x416", help="frame HxW (default 240x416)")
    parser.add_argument("--trackers", default=",".join(TRACKERS), help=f"some of {', '.join(TRACKERS)}")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--probe", nargs=6, help=argparse.SUPPRESS)  # kind way frames height width models
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    if options.probe:
        kind, way, frames, height, width, models = options.probe
        with tempfile.TemporaryDirectory() as folder:
            figures = _probe(kind, way, int(frames), int(height), int(width), Path(models), Path(folder))
        sys.stdout.write(json.dumps(figures) + "\n")
        return 0
    height, width = (int(v) for v in options.size.lower().split("x"))
    lengths = [int(v) for v in options.lengths.split(",")]
    trackers = [k for k in options.trackers.split(",") if k]
    unknown = sorted(set(trackers) - set(TRACKERS))
    if unknown:
        parser.error(f"unknown trackers {unknown}; use some of {', '.join(TRACKERS)}")
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        models = Path(folder) / "models"
        _build_models(models)
        for frames in lengths:  # lengths outermost, ways interleaved: machine noise hits both alike
            for kind in trackers:
                for way in WAYS:
                    done = subprocess.run([sys.executable, "-m", "benchmarks", "track-memory", "--probe", kind, way,
                                           str(frames), str(height), str(width), str(models)],
                                          capture_output=True, text=True, check=True, cwd=ROOT)
                    runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
                    sys.stderr.write(f"{kind} {way} {frames} frames: {runs[-1]['extra_mib']} MiB\n")
    growth = {}
    for kind in trackers:
        labels = height * width / 2**20
        slopes = {way: _slope([(r["frames"], r["extra_mib"]) for r in runs if r["tracker"] == kind and r["way"] == way])
                  for way in WAYS}
        growth[kind] = {"streamed_mib_per_frame": round(slopes["streamed"], 4),
                        "at_once_mib_per_frame": round(slopes["at_once"], 4),
                        "labels_mib_per_frame": round(labels, 4),
                        "streamed_over_labels": round(slopes["streamed"] / labels, 2),
                        "at_once_over_labels": round(slopes["at_once"] / labels, 2)}
    report = {"size": f"{height}x{width}", "lengths": lengths, "trackers": trackers, "runs": runs, "growth": growth,
              "method": runs[0]["method"] if runs else ""}
    sys.stdout.write(format_report(report))
    if options.json:
        write_json(options.json, report)
        sys.stdout.write(f"wrote {options.json}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
