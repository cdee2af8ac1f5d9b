"""SHA-256 checksums of the files a directory holds (``checksums.json``), written beside them
and verified before they are read: safetensors, torch and raw binary files carry no checksum
of their own, so a flipped bit in their data would otherwise load as a silently different
model (or cache, or recipe state).

A directory without ``checksums.json`` (a user's HF directory, an older checkpoint) is read
unverified; a file that ``checksums.json`` does not list is read unverified too."""

import hashlib
import json
from pathlib import Path
from typing import Dict, Iterable, Optional

CHECKSUMS = "checksums.json"


class ChecksumError(ValueError):
    """A file differs from the size or SHA-256 its directory's ``checksums.json`` records."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_files(paths: Iterable[Path], chunk: int = 1 << 24) -> str:
    """One SHA-256 over the names and contents of ``paths`` (in the order given)."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"cannot hash {path}: no such file")
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def read_checksums(directory: Path) -> Optional[Dict[str, Dict[str, object]]]:
    """``{file name: {"sha256": hex, "size": bytes}}`` of ``directory`` (None: no checksums file).

    Raises:
        ChecksumError: naming the file, if ``checksums.json`` is not what :func:`write_checksums` writes.
    """
    path = Path(directory) / CHECKSUMS
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_bytes().decode())["files"]
        if not all(isinstance(e["sha256"], str) and isinstance(e["size"], int) for e in files.values()):
            raise TypeError("entries must have a string sha256 and an integer size")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ChecksumError(f"{path} is corrupted (not a checksums file: {type(e).__name__}: {e})") from None
    return files


def write_checksums(directory: Path, names: Iterable[str]) -> None:
    """Record the size and SHA-256 of ``directory/<name>`` for each name, in ``checksums.json``
    (added to the entries already there). Meant for a directory still being written (the
    temporary one of an atomic write), after the files are complete."""
    directory = Path(directory)
    files = read_checksums(directory) or {}
    for name in names:
        path = directory / name
        files[name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    (directory / CHECKSUMS).write_text(json.dumps({"files": files}, indent=1, sort_keys=True) + "\n")


def verify_file(path: Path) -> bool:
    """Check ``path`` against its directory's ``checksums.json``.

    Returns:
        bool: True if it was verified, False if there is nothing to verify it against.

    Raises:
        ChecksumError: naming ``path``, if its size or SHA-256 differ from the recorded ones
            (truncated, extended or corrupted since it was written), or it is missing.
    """
    path = Path(path)
    files = read_checksums(path.parent)
    if files is None or path.name not in files:
        return False
    entry = files[path.name]
    where = path.parent / CHECKSUMS
    if not path.is_file():
        raise ChecksumError(f"{path} is missing, but {where} lists it")
    size = path.stat().st_size
    if size != entry["size"]:
        raise ChecksumError(f"{path} is corrupted: {size} bytes where {where} records {entry['size']} (truncated?)")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise ChecksumError(
            f"{path} is corrupted: its sha256 {digest[:16]}... differs from the {entry['sha256'][:16]}... "
            f"recorded in {where} when it was written"
        )
    return True


def verify_directory(directory: Path) -> bool:
    """Check every file ``directory/checksums.json`` lists (see :func:`verify_file`).

    Returns:
        bool: False if the directory has no checksums file.
    """
    files = read_checksums(directory)
    if files is None:
        return False
    for name in sorted(files):
        verify_file(Path(directory) / name)
    return True
