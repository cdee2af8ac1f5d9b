"""Writing a single file atomically: a temporary file beside it, renamed into place."""

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from jsd_loss.checkpointing._fs import fsync_dir, fsync_file


@contextmanager
def atomic_file(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` once the block succeeds.

    An exception leaves ``path`` as it was (absent, or the old file) and removes the
    temporary ``.<name>.tmp-*`` file; a kill leaves only that hidden file behind.

    Args:
        path (Path): the file to write.
        overwrite (bool): replace an existing ``path``. Default: False

    Raises:
        FileExistsError: if ``path`` exists and ``overwrite`` is False (checked before
            the block runs, so no work is wasted).
        IsADirectoryError: if ``path`` is a directory.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a file path")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600
        fsync_file(tmp)  # data on disk before the rename makes it visible
        os.replace(tmp, path)
        fsync_dir(path.parent)  # and the rename itself
    finally:
        tmp.unlink(missing_ok=True)
