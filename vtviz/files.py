"""Files written so that a kill never leaves a half-written one: the exporter, the gallery and
the map evaluation all write through here."""

from __future__ import annotations

import os
import threading
from pathlib import Path

#: Suffix of the temporary files of :func:`atomic_write` (a killed run's are deleted on resume).
TMP_SUFFIX = ".vtviz-tmp"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (its folder made when
    missing: a folder is looked for only then, as each costs a system call)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}{TMP_SUFFIX}")
    try:
        try:
            f = open(tmp, "wb")
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            f = open(tmp, "wb")
    except OSError as exc:  # a full disk or a read-only folder: say which file
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}") from None
    done = False
    try:
        try:
            with f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:  # a full disk or a read-only folder: say which file
            raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}") from None
        done = True
    finally:
        if not done:
            tmp.unlink(missing_ok=True)


def remove_stale_temporaries(out_dir: Path) -> int:
    """Delete temporary files left by a killed export; returns how many."""
    stale = list(out_dir.rglob(f"*{TMP_SUFFIX}"))
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)
