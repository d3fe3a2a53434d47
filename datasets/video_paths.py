"""Video paths from what a user types: video files, folders, and text files listing videos.

Shared by ``predict.py`` and ``extract_features.py``.  Folders are searched recursively for
files with a video ending (hidden files and folders skipped, sorted order); ``.txt``/``.lst``/
``.list`` files hold one path per line (blank lines and ``#`` comments skipped; relative paths
are relative to the list file's folder); anything else is taken as a video path as given, so
a missing file keeps its place and its row can say so.
"""

from __future__ import annotations

import os

VIDEO_EXTENSIONS = (
    ".mp4",
    ".avi",
    ".mkv",
    ".mov",
    ".webm",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".flv",
    ".wmv",
    ".3gp",
    ".ogv",
    ".ts",
    ".gif",
)
LIST_EXTENSIONS = (".txt", ".lst", ".list")


def parse_extensions(text: str) -> tuple[str, ...]:
    """``"mp4,.AVI"`` -> ``(".mp4", ".avi")``."""
    parts = [e.strip().lower() for e in text.split(",") if e.strip()]
    return tuple(e if e.startswith(".") else "." + e for e in parts)


def collect_video_paths(paths: list[str], extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> list[str]:
    """Expand folders and list files into video paths, keeping the order given."""
    found: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                found += [
                    os.path.join(dirpath, f)
                    for f in sorted(filenames)
                    if not f.startswith(".") and f.lower().endswith(extensions)
                ]
        elif path.lower().endswith(LIST_EXTENSIONS) and os.path.isfile(path):
            base = os.path.dirname(path)
            with open(path) as fh:
                for line in fh:
                    line = line.strip()
                    if line and not line.startswith("#"):
                        found.append(line if os.path.isabs(line) else os.path.join(base, line))
        else:
            found.append(path)  # a video; if it does not exist its row says so
    return found
