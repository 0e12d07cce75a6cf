"""A JSON Lines file of its own, appended to, rotated by size, reopened on SIGHUP.

For records an operator must keep and search apart from the proxy's log,
such as the ``filter`` tap's block decisions ("who was blocked from what,
when"). One record is one line, written whole.

Theory of operation
-------------------
*Writing from the reactor.* Each record is one ``write(2)`` of its line to
a file opened with ``O_APPEND``, flushed at once: the kernel copies it into
the page cache and returns, and the disk is written back later (the file
is never ``fsync``\\ ed), so a write costs microseconds and does not wait for
the disk; a thread per write would cost more than the write. Flushing each
line (rather than letting a buffer fill) keeps the file current for the
operator, and means a crash loses nothing already decided. Block decisions
are rare beside the requests the proxy carries, so this stays far off the
hot path.

*Rotation by size.* When the file reaches ``max_bytes``, it is renamed
``PATH.1`` (``PATH.1`` to ``PATH.2``, ..., up to ``keep`` old files; the
oldest is removed) and a new ``PATH`` is opened. With ``--workers`` every
worker appends to the same file (whole lines: ``O_APPEND`` puts each write
at the end); the first worker to see the file past the size rotates it, and
the others, seeing that ``PATH`` is no longer the file they hold, reopen it.

*Reopening* (`reopen`, on SIGHUP) serves ``logrotate`` and the like: they
rename the file and send SIGHUP, and the next line goes to a new ``PATH``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TextIO

__all__ = ["JsonLinesLog"]


class JsonLinesLog:
    """Appends JSON records to ``path``, one a line (see the module docstring).

    Args:
        path: the file (created if missing, with its parents' permissions).
        max_bytes: rotate when the file reaches this size; 0 never rotates.
        keep: rotated files kept (``PATH.1`` is the newest).

    Raises:
        OSError: the file cannot be opened (the caller refuses to start).
        ValueError: ``max_bytes`` or ``keep`` is negative.
    """

    def __init__(self, path: str | Path, max_bytes: int = 0, keep: int = 5) -> None:
        if max_bytes < 0 or keep < 0:
            raise ValueError("the size to rotate at and the number of files kept cannot be negative")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self._file: TextIO = self._open()

    def _open(self) -> TextIO:
        return open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line, rotating first when the file is full.

        Raises:
            OSError: the line could not be written (the disk is full, the
                file was made unwritable); the next write tries again.
        """
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        if self.max_bytes and os.fstat(self._file.fileno()).st_size >= self.max_bytes:
            self._rotate()
        self._file.write(line)
        self._file.flush()

    def reopen(self) -> None:
        """Close the file and open ``path`` again (after an outside rename: a new file).

        Raises:
            OSError: ``path`` cannot be opened; the old file stays in use.
        """
        new = self._open()
        self._file.close()
        self._file = new

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def _rotate(self) -> None:
        try:
            moved = os.stat(self.path).st_ino != os.fstat(self._file.fileno()).st_ino
        except FileNotFoundError:
            moved = True
        if not moved:  # ours to rotate (another worker may have done it: then only reopen)
            if self.keep == 0:
                os.unlink(self.path)
            else:
                for n in range(self.keep - 1, 0, -1):
                    older = self.path.with_name(f"{self.path.name}.{n}")
                    if older.exists():
                        os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.reopen()
