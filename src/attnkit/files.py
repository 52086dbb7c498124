"""Files and directories written whole or not at all.

    >>> write_text(Path("out/report.md"), text)          # one file: a temporary beside it, fsynced, renamed
    >>> with atomic_directory(Path("ckpt")) as tmp:      # a directory: filled beside it, swapped in as a whole
    ...     (tmp / "config.json").write_text("{}")
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` whole or not at all (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _default_mode(mode: int) -> int:
    """``mode`` less the process umask: what a plain open() or mkdir() would give."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def _fsync(path: Path) -> None:
    """Flush a file's data (or a directory's entries) to the disk; a filesystem that cannot sync a
    directory (EINVAL on some network filesystems) is left as it is."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it only when the block succeeds: a failed write leaves
    any previous file untouched and no partial file behind. The file is fsynced before it is renamed, so
    a crash right after never leaves an empty file under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _default_mode(0o666))  # mkstemp creates 0600; the file gets the usual permissions
        _fsync(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _swap_in(new: Path, path: Path) -> None:
    """Put directory ``new`` at ``path``: the old directory is renamed aside, ``new`` renamed in, the old one
    removed. If renaming ``new`` in fails, the old directory is renamed back."""
    if not os.path.lexists(path):
        os.rename(new, path)
    else:
        aside = path.with_name(f".{path.name}.{secrets.token_hex(6)}.old")
        os.rename(path, aside)
        try:
            os.rename(new, path)
        except BaseException:
            os.rename(aside, path)
            raise
        shutil.rmtree(aside, ignore_errors=True)  # the new directory is in place: a leftover is only litter
    _fsync(path.parent)


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """An empty temporary directory beside ``path`` (so on the same filesystem) that replaces the directory
    ``path`` as a whole when the block succeeds; its files are fsynced first.

    Whatever fails (inside the block, the fsync or the swap), ``path`` keeps its previous contents and no
    temporary directory is left behind. The swap is two renames: a crash between them leaves the previous
    directory under a hidden ``.name.*.old`` name beside ``path``. A new directory gets the usual permissions
    (0777 less the umask), a replaced one keeps its own. ``path`` must not be a file; a link at ``path`` is
    itself replaced (resolve it first to replace the directory it points to).
    """
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{str(path)!r} is a file; expected a directory (or a path that does not exist)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".new"))
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file() and not file.is_symlink():
                _fsync(file)
        _fsync(tmp)
        mode = stat.S_IMODE(path.stat().st_mode) if path.is_dir() else _default_mode(0o777)
        os.chmod(tmp, mode)
        _swap_in(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # still there only when something failed


__all__ = ["write_text", "atomic_path", "atomic_directory"]
