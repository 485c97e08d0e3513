"""The ESP-IDF driver: find ``idf.py`` and build a generated project with it."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from cryblock.errors import CryblockError


def find_idf() -> str | None:
    """How ESP-IDF can be run here: ``"idf.py"`` on PATH, ``"$IDF_PATH"`` if only IDF_PATH is
    set (its export script must be sourced), or None."""
    if shutil.which("idf.py"):
        return "idf.py"
    if os.environ.get("IDF_PATH"):
        return "$IDF_PATH"
    return None


def run_idf_build(project: Path, target: str = "esp32s3", options: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Run ``idf.py [options] build`` in ``project`` (through ``$IDF_PATH/export.sh`` when idf.py
    is not on PATH; ``--preview`` for the linux target). The target comes from the project's
    ``sdkconfig.defaults`` (``CONFIG_IDF_TARGET``) — not ``idf.py set-target``, which would wipe
    the user's ``sdkconfig`` and ``build/``. ``options`` go before ``build`` (e.g. ``-B folder
    -D SDKCONFIG_DEFAULTS=…``). Output goes to the terminal.

    Raises:
        CryblockError: ESP-IDF is not available, or the build fails.
    """
    how = find_idf()
    if how is None:
        raise CryblockError("ESP-IDF not found (idf.py not on PATH and IDF_PATH unset)")
    args = (["--preview"] if target == "linux" else []) + list(options) + ["build"]
    cmd = shlex.join(["idf.py", *args])
    if how == "idf.py":
        argv = ["idf.py", *args]
    else:
        export = Path(os.environ["IDF_PATH"]) / "export.sh"
        argv = ["bash", "-c", f". {shlex.quote(str(export))} >/dev/null && {cmd}"]
    r = subprocess.run(argv, cwd=str(project))
    if r.returncode != 0:
        raise CryblockError(f"{project}: `{cmd}` failed with exit status {r.returncode}")
    return r


def idf_size(project: Path, python: str | None = None) -> dict | None:
    """Flash and static RAM of a built project, from its linker map with ``esp_idf_size``
    (``python -m esp_idf_size --format json build/<name>.map``; ``idf.py size`` of ESP-IDF 5.1
    crashes with current click). Returns ``{"flash_bytes", "dram_bytes", "iram_bytes", "tool"}``
    (the sums of esp_idf_size's flash / DRAM / IRAM figures), or None when there is no map file or
    esp_idf_size is not installed in ``python`` (default: ESP-IDF's ``$IDF_PYTHON_ENV_PATH``, else
    this interpreter)."""
    import json
    import sys

    maps = sorted(Path(project, "build").glob("*.map"))
    if not maps:
        return None
    env_py = Path(os.environ.get("IDF_PYTHON_ENV_PATH", ""), "bin", "python")
    py = python or (str(env_py) if env_py.is_file() else sys.executable)
    r = subprocess.run([py, "-m", "esp_idf_size", "--format", "json", str(maps[0])], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    try:
        doc = json.loads(r.stdout)
    except ValueError:
        return None
    return parse_idf_size(doc)


def parse_idf_size(doc: dict) -> dict:
    """The totals of an ``esp_idf_size --format json`` summary (esp-idf-size 1.x keys:
    ``flash_code``, ``flash_rodata``, ``dram_data``, ``dram_bss``, ``iram_text``, … and
    ``total_size``; missing keys count as 0)."""
    def g(*keys):
        return int(sum(int(doc.get(k) or 0) for k in keys))

    return {"flash_bytes": g("total_size") or g("flash_code", "flash_rodata", "dram_data", "iram_text", "iram_vectors"),
            "dram_bytes": g("used_dram") or g("dram_data", "dram_bss"),
            "iram_bytes": g("used_iram") or g("iram_text", "iram_vectors"),
            "tool": "esp_idf_size"}
