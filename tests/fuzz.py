"""A small seeded fuzz of a file reader: the file cut at several offsets and single bits
flipped, each read twice, without and with its checksum. It runs in a child process under a
timeout, so a hang or a crash of the interpreter fails the test instead of ending the run.

    python -m tests.fuzz READER TARGET SEED FLIPS   (one JSON line per case and mode)
"""

import hashlib
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List

REPO = Path(__file__).resolve().parents[1]


def cases(size: int, seed: int, flips: int) -> List[list]:
    """Cuts at fixed offsets (start, header, middle, end) and a few random ones, then ``flips``
    single bit flips at seeded random positions."""
    rng = random.Random(seed)
    cuts = sorted({0, 1, 7, 8, 24, 100, size // 4, size // 2, size - 8, size - 1} | {rng.randrange(size) for _ in range(4)})
    return [["cut", c] for c in cuts if 0 <= c < size] + [["flip", rng.randrange(size), rng.randrange(8)]
                                                          for _ in range(flips)]


def _digest(obj) -> str:
    """A fingerprint of what a reader returned (tensors, arrays, strings, containers)."""
    import numpy as np
    import torch

    h = hashlib.sha256()

    def walk(x):
        if isinstance(x, torch.Tensor):
            h.update(str((x.dtype, tuple(x.shape))).encode() + x.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, np.ndarray):
            h.update(str((x.dtype, x.shape)).encode() + np.ascontiguousarray(x).tobytes())
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                h.update(repr(k).encode())
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        elif hasattr(x, "__dataclass_fields__"):
            walk(vars(x))
        else:
            h.update(repr(x).encode())

    walk(obj)
    return h.hexdigest()


def _aside(path: Path):
    """A context that hides ``path`` (a checksums file) while a reader runs unchecked."""
    from contextlib import contextmanager

    @contextmanager
    def hidden():
        hide = path.with_name(path.name + ".aside")
        path.rename(hide)
        try:
            yield
        finally:
            hide.rename(path)

    return hidden()


def _reader(name: str, target: Path, original: bytes) -> Callable[[bool], object]:
    """The reader as ``read(checked)``: checked, with the checksum the project records for it
    (only its own modules imported: the child's start is most of its time)."""
    digest = hashlib.sha256(original).hexdigest()  # of the intact file, computed here

    def checksummed(read_dir):  # the checksums.json its directory holds, or that file hidden
        def read(checked):
            if checked:
                return read_dir()
            with _aside(target.parent / "checksums.json"):
                return read_dir()
        return read

    if name == "safetensors":
        from jsd_loss.checkpointing import load_state_dict

        return checksummed(lambda: load_state_dict(target.parent))
    if name == "gguf":
        from jsd_loss.prepare._gguf import read_gguf

        return lambda checked: read_gguf(target, sha256=digest if checked else None)
    if name == "dolly":
        from jsd_loss.datasets._dolly import load_rows

        return lambda checked: load_rows(str(target), sha256=digest if checked else None)
    if name == "cache":
        from jsd_loss.teacher._store import TopKTeacherCache

        def cache_rows():
            cache = TopKTeacherCache(target.parents[1])
            return [cache.row(r) for r in sorted(cache.rows)]

        return checksummed(cache_rows)
    raise ValueError(f"no reader {name!r}")


def _child(reader: str, target: Path, seed: int, flips: int) -> None:
    original = target.read_bytes()
    read = _reader(reader, target, original)
    expected = _digest(read(True))
    for case in cases(len(original), seed, flips):
        data = bytearray(original[: case[1]] if case[0] == "cut" else original)
        if case[0] == "flip":
            data[case[1]] ^= 1 << case[2]
        target.write_bytes(bytes(data))
        for checked in (False, True):
            print(json.dumps({"case": case, "checked": checked, "seen": "running"}), flush=True)
            try:
                result = "same" if _digest(read(checked)) == expected else "different"
                out = {"result": result}
            except BaseException as e:  # a Rust panic is a BaseException
                out = {"result": "error", "named": str(target) in str(e), "error": f"{type(e).__name__}: {e}"[:400]}
            print(json.dumps({"case": case, "checked": checked, **out}), flush=True)
    target.write_bytes(original)


def fuzz(reader: str, root: Path, target: str, seed: int = 0, flips: int = 40, timeout: float = 120) -> List[dict]:
    """Run the fuzz of ``reader`` over ``root/target``, in a copy of ``root``, in a child process.

    Raises:
        AssertionError: if the child hangs past ``timeout`` or dies (naming the case it was reading).
    """
    copy = root.with_name(root.name + "_fuzz")
    shutil.copytree(root, copy)
    cmd = [sys.executable, "-m", "tests.fuzz", reader, str(copy / target), str(seed), str(flips)]
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
        raise AssertionError(f"the {reader} reader hung (no answer in {timeout} s) at {out.splitlines()[-1:]}") from None
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0, (f"the {reader} reader crashed the interpreter (exit {proc.returncode}) at "
                                  f"{lines[-1:]}: {proc.stderr[-2000:]}")
    return [r for r in lines if r.get("seen") != "running"]


def check(outcomes: List[dict], cuts_always_refused: bool) -> Dict[str, int]:
    """The rules every reader keeps: an error always names the file; with its checksum every
    change is refused; without it a cut is refused where ``cuts_always_refused`` (or reads
    the same data: a trailing newline cut off), and anything else either refused or read (a
    region only the checksum can guard).

    Returns:
        Dict[str, int]: how many unchecked cases were refused, read unchanged, read different.
    """
    assert outcomes, "no cases ran"
    unnamed = [o for o in outcomes if o["result"] == "error" and not o["named"]]
    assert not unnamed, f"errors that do not name the file: {unnamed[:3]}"
    missed = [o for o in outcomes if o["checked"] and o["result"] != "error"]
    assert not missed, f"changes that the checksum let through: {missed[:3]}"
    if cuts_always_refused:
        cuts = [o for o in outcomes if not o["checked"] and o["case"][0] == "cut" and o["result"] == "different"]
        assert not cuts, f"truncated files read as other data without an error: {cuts[:3]}"
    unchecked = [o["result"] for o in outcomes if not o["checked"]]
    return {r: unchecked.count(r) for r in ("error", "same", "different")}


if __name__ == "__main__":
    _child(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
