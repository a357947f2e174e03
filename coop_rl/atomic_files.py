"""Files a crash never leaves half written.

Each file is written to a temporary file in its own folder, flushed to disk, then renamed over its name
(``os.replace``, atomic on POSIX): whoever reads it, and a run that is killed mid-write, finds the previous file
whole or the new one whole, never a truncated one. Temporary names are ``.<name>.<pid>.tmp``.

A symbolic link is followed (the file it points to is replaced, the link stays), and a path that is not a regular
file (``/dev/stdout``, a FIFO, a device) is written directly: a rename would put a plain file in its place.

:func:`check_out_dir` checks, before any work, that a command will be able to write into its output folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from coop_rl.errors import UsageError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write (with any writer: ``torch.save``, ``savefig``, ...); renamed over
    ``path`` when the block ends, after its bytes reach the disk. On an error the temporary file is removed and
    ``path`` is left as it was."""
    if Path(path).exists() and not Path(path).is_file():  # a device, FIFO, pipe (stat follows links): write to it
        yield Path(path)
        return
    final = Path(os.path.realpath(path))  # a link's target is replaced, the link stays
    temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_path`); returns ``path``."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def remove_folder(path: str | Path) -> None:
    """Remove the folder ``path`` as one step: renamed aside (``.<name>.removing-<pid>``), then deleted. A crash or
    Ctrl-C midway leaves the folder whole or gone, never a half-deleted one whose marker files still read as a
    finished run; an aside copy left by such a crash is deleted by the next removal in the same folder."""
    folder = Path(path)
    if folder.is_symlink() or not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder (a link is never removed through)")
    for leftover in folder.parent.iterdir():
        if not leftover.name.startswith(f".{folder.name}.removing-"):
            continue
        if leftover.is_symlink():
            leftover.unlink()
        else:
            shutil.rmtree(leftover, ignore_errors=True)
    aside = folder.with_name(f".{folder.name}.removing-{os.getpid()}")
    os.replace(folder, aside)
    shutil.rmtree(aside)


def check_out_dir(path: str | None, flag: str = "--out", files: tuple[str, ...] = ()) -> str | None:
    """``path`` if it can become the output directory (it is created when the results are written), checked before
    any match is played: the nearest existing folder on its way must be a writable directory, and none of the
    ``files`` the command writes into it may be a directory (a UsageError naming ``flag``)."""
    if path is None:
        return None
    if not path.strip():
        raise UsageError(f"{flag} needs a folder path")
    target = Path(path)
    dangling = next((p for p in (target, *target.parents) if p.is_symlink() and not p.exists()), None)
    if dangling is not None:  # exists() is false through it, yet nothing can be created there
        raise UsageError(f"cannot use {flag} {path!r}: {dangling} is a link to nothing")
    existing = next((p for p in (target, *target.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise UsageError(f"cannot use {flag} {path!r}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot use {flag} {path!r}: {existing} is not writable")
    blocked = next((target / name for name in files if (target / name).is_dir()), None)
    if blocked is not None:
        raise UsageError(f"cannot use {flag} {path!r}: {blocked} is a directory")
    return path


__all__ = ["atomic_path", "check_out_dir", "remove_folder", "write_text_atomic"]
