"""The ESP-IDF driver: find ``idf.py`` and build a generated project with it."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from cryblock.errors import CryblockError


def find_idf() -> str | None:
    """How ESP-IDF can be run here: ``"idf.py"`` on PATH, ``"$IDF_PATH"`` if only IDF_PATH is
    set (its export script must be sourced), or None."""
    if shutil.which("idf.py"):
        return "idf.py"
    if os.environ.get("IDF_PATH"):
        return "$IDF_PATH"
    return None


def run_idf_build(project: Path, target: str = "esp32s3") -> subprocess.CompletedProcess:
    """Run ``idf.py set-target <target> build`` in ``project`` (through ``$IDF_PATH/export.sh``
    when idf.py is not on PATH). Output goes to the terminal. Raises CryblockError when ESP-IDF
    is not available or the build fails."""
    how = find_idf()
    if how is None:
        raise CryblockError("ESP-IDF not found (idf.py not on PATH and IDF_PATH unset)")
    cmd = f"idf.py set-target {target} build"
    if how == "idf.py":
        argv = ["idf.py", "set-target", target, "build"]
    else:
        export = Path(os.environ["IDF_PATH"]) / "export.sh"
        argv = ["bash", "-c", f'. "{export}" >/dev/null && {cmd}']
    r = subprocess.run(argv, cwd=str(project))
    if r.returncode != 0:
        raise CryblockError(f"{project}: `{cmd}` failed with exit status {r.returncode}")
    return r
