"""A manifest written last into each prepared directory, so a re-run can tell a complete,
unchanged output (skip) from a missing, partial or edited one."""

import json
from pathlib import Path
from typing import Optional

MANIFEST = "jsd_distill_prepare.json"


def write_manifest(target: Path, info: dict) -> None:
    target = Path(target)
    files = {p.name: p.stat().st_size for p in sorted(target.iterdir()) if p.name != MANIFEST}
    (target / MANIFEST).write_text(json.dumps({**info, "files": files}, indent=2) + "\n")


def verified_manifest(target: Path, **expected) -> Optional[dict]:
    """The manifest if ``target`` is complete (every listed file present with its size)
    and its recorded inputs equal ``expected``; otherwise None."""
    path = Path(target) / MANIFEST
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if any(info.get(k) != v for k, v in expected.items()):
        return None
    for name, size in info.get("files", {}).items():
        f = Path(target) / name
        if not f.is_file() or f.stat().st_size != size:
            return None
    return info


def refuse_foreign_output(output_dir: Path, overwrite: bool) -> None:
    """Refuse to replace a non-empty ``output_dir`` that is not a verified output, unless asked."""
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{output_dir} exists, is not empty and is not a verified output of this command; "
            "pass --overwrite to replace it (the old contents stay until the new ones are complete)"
        )
