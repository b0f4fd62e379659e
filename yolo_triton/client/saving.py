"""Where `yolo-triton detect --save-dir` puts annotated pictures: one JPEG per image and per video
frame (`<stem>_<frame>.jpg`, so frames do not overwrite each other), and with `--save-video` one
annotated MP4 per video (`<stem>_annotated.mp4`, at the source's frame rate)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from yolo_triton.client import images
from yolo_triton.pipeline.validation import InputError

VIDEO_FOURCC = "mp4v"  # in every OpenCV wheel, unlike H.264


def frame_path(save_dir: Path, source: Path, index: int | None) -> Path:
    """The annotated JPEG of an image (index None) or of frame `index` of a video."""
    return save_dir / (f"{source.stem}_{index}.jpg" if index is not None else f"{source.stem}.jpg")


def video_path(save_dir: Path, source: Path) -> Path:
    return save_dir / f"{source.stem}_annotated.mp4"


class AnnotatedVideo:
    """An MP4 written frame by frame, opened at the first frame (its size is the video's)."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps = path, fps
        self.writer: cv2.VideoWriter | None = None

    def write(self, frame: np.ndarray) -> None:
        if self.writer is None:
            h, w = frame.shape[:2]
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*VIDEO_FOURCC), self.fps, (w, h))
            if not self.writer.isOpened():
                raise InputError(f"{self.path}: cannot write a video here (OpenCV has no {VIDEO_FOURCC} writer, "
                                 "or the folder is not writable): leave out --save-video")
        self.writer.write(frame)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None


def video_for(save_dir: Path | None, source: Path, wanted: bool) -> AnnotatedVideo | None:
    """The annotated video of `source`, when one is wanted and `source` is a video."""
    if not (wanted and save_dir is not None and images.is_video(source)):
        return None
    return AnnotatedVideo(video_path(save_dir, source), images.video_fps(source))
