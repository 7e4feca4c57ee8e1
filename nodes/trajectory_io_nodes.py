"""TTM_SaveTrajectory / TTM_LoadTrajectory: a mask trajectory as a file (docs/TRAJECTORY_FILE.md).

Save writes under ComfyUI's output folder with Video Combine's path-safe ``filename_prefix``;
Load reads from ComfyUI's input folder (files uploaded through /upload/image, as ttm-batch does,
or copied there), refusing names that leave it. The file work is ttm_core.motion.trajectory_file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import folder_paths
from comfy_api.latest import io

from ..ttm_core.errors import TTMInputError
from ..ttm_core.media import split_prefix
from ..ttm_core.motion.trajectory_file import (
    EXTENSION,
    list_trajectory_files,
    read_trajectory,
    resolve_input_file,
    save_trajectory,
)
from ..ttm_core.types import Trajectory
from ._common import CATEGORY, Objects, Prompts
from ._common import Trajectory as TrajectorySocket


class SaveTrajectory(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_SaveTrajectory",
            display_name="Save Trajectory (Through-The-Mask)",
            category=CATEGORY,
            description="Save a mask trajectory (label video, first-frame masks, objects, prompts, fps, depth order, "
                        "transforms) exactly, bit for bit, as one .npz file in the output folder. Copy or upload it "
                        "to the input folder and Load Trajectory gives the same trajectory back.",
            inputs=[
                TrajectorySocket.Input("trajectory", tooltip="The mask trajectory to save."),
                io.String.Input("filename_prefix", default="ttm/trajectory",
                                tooltip="File name prefix inside ComfyUI's output folder; subfolders allowed "
                                        "('ttm/shot1'), nothing outside the output folder. The file is "
                                        f"<prefix>_<counter>_{EXTENSION}."),
            ],
            outputs=[io.String.Output("file", tooltip="The saved file, relative to the output folder "
                                                      "(e.g. ttm/trajectory_00001_.npz).")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, filename_prefix=None) -> bool | str:
        if isinstance(filename_prefix, str):
            try:
                split_prefix(filename_prefix)
            except TTMInputError as err:
                return str(err)
        return True

    @classmethod
    def execute(cls, trajectory: Trajectory, filename_prefix: str) -> io.NodeOutput:
        subfolder, stem = split_prefix(filename_prefix)
        path = save_trajectory(trajectory, Path(folder_paths.get_output_directory()) / subfolder, stem)
        relative = f"{subfolder}/{path.name}" if subfolder else path.name
        saved = {"filename": path.name, "subfolder": subfolder, "type": io.FolderType.output.value}
        return io.NodeOutput(relative, ui={"trajectories": [saved]})


def _input_dir() -> Path:
    return Path(folder_paths.get_input_directory())


class LoadTrajectory(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = list_trajectory_files(_input_dir())
        return io.Schema(
            node_id="TTM_LoadTrajectory",
            display_name="Load Trajectory (Through-The-Mask)",
            category=CATEGORY,
            description="Load a trajectory saved by Save Trajectory from ComfyUI's input folder, exactly as it was "
                        "saved (labels, masks, transforms, prompts, fps, depth order, ids, colours).",
            inputs=[
                io.Combo.Input("file", options=files, default=files[0] if files else None,
                               tooltip=f"A {EXTENSION} trajectory file in ComfyUI's input folder (subfolders "
                                       "listed too). Put it there by copying it from the output folder or by "
                                       "uploading it (POST /upload/image, as ttm-batch does); refresh to list it."),
            ],
            outputs=[
                TrajectorySocket.Output("trajectory", tooltip="The saved mask trajectory."),
                Objects.Output("objects", tooltip="Its objects: first-frame masks, ids, colours and prompts."),
                Prompts.Output("prompts", tooltip="Its prompts: global, motion and one local prompt per object."),
                io.Image.Output("preview", tooltip="The colour-coded trajectory [T, H, W, 3]."),
                io.Float.Output("fps", tooltip="The trajectory's frame rate."),
            ],
        )

    @classmethod
    def validate_inputs(cls, file=None) -> bool | str:
        if isinstance(file, str):
            try:
                path = resolve_input_file(_input_dir(), file)
            except TTMInputError as err:
                return str(err)
            if not path.is_file():
                return (f"file: {file!r} is not in ComfyUI's input folder. Fix: pick a file from the list, or "
                        f"upload / copy the {EXTENSION} there first")
        return True

    @classmethod
    def fingerprint_inputs(cls, file: str) -> str:
        """Run again when the file's contents change (an upload that overwrites it)."""
        try:
            return hashlib.sha256(resolve_input_file(_input_dir(), file).read_bytes()).hexdigest()
        except (TTMInputError, OSError):
            return f"unreadable:{file}"

    @classmethod
    def execute(cls, file: str) -> io.NodeOutput:
        trajectory = read_trajectory(resolve_input_file(_input_dir(), file), shown=file)
        objects = trajectory.objects
        return io.NodeOutput(trajectory, objects, objects.prompts, trajectory.color_video(), float(trajectory.fps))
