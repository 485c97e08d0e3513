"""Locating, downloading and verifying the YAMNet teacher file.

Resolution order (:func:`resolve_teacher_path`): the ``path`` argument, the environment variable
``$CRYBLOCK_TEACHER``, the user cache ``default_cache_dir()/models/``, else a download of the
official release into that cache (sha256-checked, :func:`download_teacher`).
"""
from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryblock.errors import CryblockError


@dataclass(frozen=True)
class TeacherSource:
    """An official YAMNet release the teacher can be downloaded from.

    Attributes:
        filename: name of the file in the cache (``default_cache_dir()/models/<filename>``).
        url: download address.
        sha256: expected hex digest of the downloaded file.
        description: where the URL and the checksum come from.
    """

    filename: str
    url: str
    sha256: str
    description: str = ""


#: Official releases, tried in order by :func:`download_teacher`.
#: * yamnet.h5: the float Keras weights linked from the YAMNet README (tensorflow/models
#:   research/audioset/yamnet); 15,296,092 bytes, sha256 as recorded by independent users of
#:   that URL.
#: * yamnet.tflite: the TF-Hub TFLite release (google/lite-model/yamnet/tflite/1, now served
#:   by Kaggle Models); sha256 as recorded by independent users of that URL.
OFFICIAL_SOURCES: tuple[TeacherSource, ...] = (
    TeacherSource("yamnet.h5", "https://storage.googleapis.com/audioset/yamnet.h5",
                  "13c3308955bbfaef262f175ac9c40e47b134573a93984f009220dd7cc12a1744",
                  "YAMNet Keras weights (tensorflow/models research/audioset/yamnet README)"),
    TeacherSource("yamnet.tflite", "https://tfhub.dev/google/lite-model/yamnet/tflite/1?lite-format=tflite",
                  "141fba1cdaae842c816f28edc4937e8b4f0af4c8df21862ccc6b52dc567993c3",
                  "YAMNet TFLite (TF Hub google/lite-model/yamnet/tflite/1)"),
)

#: sha256 digests of teacher files known to load correctly, by file name. Files in the user
#: cache must match one of these (a mismatch means a corrupt or interrupted download).
#: 469be6a3… is the dynamic-range-quantised YAMNet TFLite of shared/models (its README).
KNOWN_SHA256: dict[str, frozenset[str]] = {
    "yamnet.tflite": frozenset({
        "469be6a3421cbc52cf97e9f2f966cba984198e8e7af9854d68b3e3ebb1e04194",
        "141fba1cdaae842c816f28edc4937e8b4f0af4c8df21862ccc6b52dc567993c3",
    }),
    "yamnet.h5": frozenset({"13c3308955bbfaef262f175ac9c40e47b134573a93984f009220dd7cc12a1744"}),
}


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks). Raises CryblockError if unreadable."""
    from cryblock.inputs import regular_digest

    try:
        return regular_digest(path)
    except OSError as e:
        raise CryblockError(f"{path}: cannot read teacher file ({e.strerror or e})") from None


def verify_sha256(path: str | os.PathLike, expected: str | Sequence[str]) -> str:
    """Check a file's sha256 against one or several accepted hex digests.

    Returns:
        the file's digest.

    Raises:
        CryblockError: digest not accepted (names the file, the digest and the expected one).
    """
    accepted = {expected.lower()} if isinstance(expected, str) else {e.lower() for e in expected}
    digest = sha256_file(path)
    if digest not in accepted:
        raise CryblockError(f"{path}: sha256 {digest} does not match the expected "
                            f"{' or '.join(sorted(accepted))} (corrupt or incomplete file; delete it "
                            "and download it again)")
    return digest


def teacher_cache_dir() -> Path:
    """Folder of downloaded teachers: ``cryblock.data.default_cache_dir() / 'models'``."""
    from cryblock.data import default_cache_dir

    return default_cache_dir() / "models"


def _find_in_dir(d: Path) -> Path | None:
    """A teacher inside folder ``d``: the folder itself if it is a SavedModel, else
    yamnet.tflite / yamnet.h5 in it."""
    if (d / "saved_model.pb").is_file():
        return d
    for name in ("yamnet.tflite", "yamnet.h5"):
        if (d / name).is_file():
            return d / name
    return None


def download_teacher(dest_dir: str | os.PathLike | None = None,
                     sources: Sequence[TeacherSource] = OFFICIAL_SOURCES, *, timeout: float = 60.0) -> Path:
    """Download the first reachable official YAMNet release into ``dest_dir``.

    The file is written to a temporary name, its sha256 checked against
    :attr:`TeacherSource.sha256`, then renamed into place — never half a file.

    Args:
        dest_dir: target folder (default :func:`teacher_cache_dir`).
        sources: releases to try, in order.
        timeout: seconds per connection attempt.

    Returns:
        path of the downloaded file.

    Raises:
        CryblockError: no source could be downloaded (no network, HTTP error) or a download
            failed its checksum; the message lists each URL and its problem and how to point
            cryblock at a local file instead.
    """
    dest = Path(dest_dir) if dest_dir is not None else teacher_cache_dir()
    problems = []
    for src in sources:
        target = dest / src.filename
        try:
            dest.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{src.filename}.", suffix=".part", dir=dest)
        except OSError as e:
            raise CryblockError(f"{dest}: cannot write the teacher cache ({e.strerror or e})") from None
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(src.url, timeout=timeout) as resp:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
            verify_sha256(tmp, src.sha256)
            os.replace(tmp, target)
            return target
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            problems.append(f"{src.url}: {reason}")
        except CryblockError as e:
            problems.append(f"{src.url}: {e}")
        finally:
            if tmp.exists():
                tmp.unlink()
    raise CryblockError("no YAMNet teacher found and the download failed (" + "; ".join(problems)
                        + "); pass the teacher file (yamnet.tflite / yamnet.h5 / SavedModel folder) "
                        "explicitly or set $CRYBLOCK_TEACHER")


def resolve_teacher_path(path: str | os.PathLike | None = None, *, download: bool = True,
                         sources: Sequence[TeacherSource] = OFFICIAL_SOURCES) -> Path:
    """Find the teacher model file.

    Order: ``path`` argument; ``$CRYBLOCK_TEACHER``; the user cache
    (``default_cache_dir()/models/yamnet.tflite``, ``yamnet.h5``, ``saved_model/``), whose files
    must match a known sha256 (:data:`KNOWN_SHA256`); else, if ``download``, the official
    release is downloaded into the cache (:func:`download_teacher`).

    A folder given as ``path``/``$CRYBLOCK_TEACHER`` may be a SavedModel or contain
    ``yamnet.tflite``/``yamnet.h5``.

    Returns:
        path of a .tflite file, a .h5 file or a SavedModel folder.

    Raises:
        CryblockError: the given path (or $CRYBLOCK_TEACHER) does not exist / holds no teacher;
            a cached file fails its checksum; nothing found and the download failed or is off.
    """
    for given, what in ((path, "teacher"), (os.environ.get("CRYBLOCK_TEACHER") or None, "$CRYBLOCK_TEACHER")):
        if given is None:
            continue
        p = Path(given).expanduser()
        if p.is_dir():
            found = _find_in_dir(p)
            if found is None:
                raise CryblockError(f"{p}: {what} folder holds no yamnet.tflite, yamnet.h5 or saved_model.pb")
            return found
        if not p.is_file():
            raise CryblockError(f"{p}: {what} file not found")
        return p
    cache = teacher_cache_dir()
    for name in ("yamnet.tflite", "yamnet.h5"):
        f = cache / name
        if f.is_file():
            verify_sha256(f, KNOWN_SHA256[name])
            return f
    if (cache / "saved_model" / "saved_model.pb").is_file():
        return cache / "saved_model"
    if not download:
        raise CryblockError(f"no YAMNet teacher: pass its file, set $CRYBLOCK_TEACHER, or put yamnet.tflite / "
                            f"yamnet.h5 in {cache}")
    return download_teacher(cache, sources)
