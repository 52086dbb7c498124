"""Where ``attnkit explain`` writes its page and figures: a folder per text and model, which holds exactly the
files of the run that wrote it last (a re-run replaces the folder as a whole, through ``files.atomic_directory``:
no previous run's figures are left beside the new ones, and a failed run leaves the previous files as they were).

    >>> default_directory("The animal didn't cross the street", "all-MiniLM-L6-v2")
    PosixPath('attnkit-explain/the-animal-didn-t-cross-the-street-4e7bea')
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

ROOT = Path("attnkit-explain")
SLUG_CHARS = 40  # the words of the text kept in a folder name, at most
PAGE = "attention.html"  # the page explain writes (html.py)
FIGURE_FORMATS = ("png", "svg", "pdf")  # the formats figures.py writes
# the figures' names without the format (figures.py fills the fields in)
HEAD_FIGURE, LAYERS_FIGURE, ROLLOUT_FIGURE, IMAGE_FIGURE = "head_L{layer}_H{head}", "layers_mean", "rollout", \
    "image_q{focus}"


def _any_numbers(pattern: str) -> str:
    """A figure name's pattern as a regular expression: each {field} any number."""
    return re.sub(r"\\\{\w+\\\}", r"\\d+", re.escape(pattern))


# the names explain writes: a folder holding only these may be replaced by a re-run
_STEMS = "|".join(_any_numbers(p) for p in (HEAD_FIGURE, LAYERS_FIGURE, ROLLOUT_FIGURE, IMAGE_FIGURE))
OWN_FILES = re.compile(rf"{re.escape(PAGE)}|({_STEMS})\.({'|'.join(FIGURE_FORMATS)})")


def slug(text: str, model: str) -> str:
    """A folder name for ``text`` through ``model``: the text's first words, lowercased and joined by "-" (at
    most ``SLUG_CHARS`` characters), then 6 hex digits of a hash of the text and the model, so that texts
    that share their first words, or the same text through two models, never share a folder."""
    name = ""
    for word in re.findall(r"[^\W_]+", text.lower()):
        if len(name) + len(word) + 1 > SLUG_CHARS:
            break
        name = f"{name}-{word}" if name else word
    digest = hashlib.sha256(f"{model}\0{text}".encode()).hexdigest()[:6]
    return f"{name or 'text'}-{digest}"


def default_directory(text: str, model: str) -> Path:
    """``./attnkit-explain/<slug>``: see :func:`slug`."""
    return ROOT / slug(text, model)


def check_replaceable(path: Path, option: str = "--out") -> None:
    """``path`` may be replaced as a whole by a run's files: it does not exist, or is a directory that holds
    only files an explain run writes, and it is not the working directory or one above it. ValueError naming
    ``option`` otherwise, before anything runs: a folder of other files is never deleted."""
    if not path.exists():
        return
    resolved, here = path.resolve(), Path.cwd().resolve()
    if resolved == here or resolved in here.parents:
        raise ValueError(f"{option} {path}: is the working directory or above it; a run replaces its output "
                         f"directory as a whole, so name a directory of its own")
    others = sorted(p.name for p in path.iterdir() if not (p.is_file() and OWN_FILES.fullmatch(p.name)))
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise ValueError(f"{option} {path}: holds files attnkit explain did not write ({shown}); a run replaces "
                         f"its output directory as a whole, so name a new or empty directory")


def writable_target(path: Path) -> Path:
    """The directory to replace: ``path``, or what a link at ``path`` points to (the link is kept)."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path
