"""AudioSet-style inputs: a segments CSV plus a folder of audio, mapped to the run's labels.

The CSV is AudioSet's (``balanced_train_segments.csv``, ``eval_segments.csv``, …)::

    # Segments csv created Sun Mar  5 10:54:31 2017
    # num_ytids=22160, num_segs=22160, num_unique_labels=527, num_positive_labels=52882
    # YTID, start_seconds, end_seconds, positive_labels
    --PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"

(``#`` lines are comments; ``positive_labels`` are AudioSet ontology ids). Each segment's audio
is a file in the folder (searched recursively) named after its YouTube id, as the usual
downloaders save them: ``YTID.wav``, ``YTID_START.wav``, ``YTID_START_END.wav``, optionally with
a leading ``Y`` (``Y--PJHxphWEs_30.000_40.000.wav``); where several files share an id, the one
whose START equals the segment's start is taken. The file is the segment (not the whole video).

Labels come from the ontology ids:

* preset **cry**: a segment holding "Crying, sobbing" (``/m/0463cq4``) or "Baby cry, infant
  cry" (``/t/dd00002``) — YAMNet's classes :data:`cryblock.params.CRY_CLASSES`, ids read from
  ``yamnet_class_map.csv`` — is ``cry``, every other segment ``not_cry``;
* preset **general**: the user's mapping ``ID=LABEL`` (first match in the mapping's order wins);
  segments that match none get ``other_label`` or are left out (counted).

The group of a segment is its YouTube id (one video = one group), its category the display name
of its first label, its source "AudioSet". Segments without an audio file are counted and
reported, never fatal.
"""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Sequence

from cryblock.errors import DataError
from cryblock.params import CRY_CLASSES

#: Audio file suffixes searched for (formats libsndfile decodes).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")
_ID_RE = re.compile(r"^/[a-z]/[A-Za-z0-9_]+$")
#: YouTube ids are 11 characters of [A-Za-z0-9_-].
_YTID_LEN = 11


def _class_map() -> list[dict[str, str]]:
    """Rows (index, mid, display_name) of YAMNet's class map shipped with cryblock."""
    from cryblock.blocks.learn import teacher

    with Path(teacher.__file__).with_name(teacher.CLASS_MAP_NAME).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def ontology_names() -> dict[str, str]:
    """``{ontology id: display name}`` of YAMNet's 521 classes (``yamnet_class_map.csv``)."""
    return {row["mid"]: row["display_name"] for row in _class_map()}


def cry_ids() -> tuple[str, ...]:
    """Ontology ids of the cry preset's positive classes (YAMNet classes 19 and 20:
    ``/m/0463cq4`` "Crying, sobbing", ``/t/dd00002`` "Baby cry, infant cry")."""
    rows = _class_map()
    return tuple(rows[i]["mid"] for i in CRY_CLASSES)


def parse_mapping(items: Sequence[str]) -> dict[str, str]:
    """``["/m/0bt9lr=dog", …]`` → ``{"/m/0bt9lr": "dog"}`` (order kept).

    Raises:
        DataError: an item that is not ``ONTOLOGY_ID=LABEL``.
    """
    out: dict[str, str] = {}
    for item in items:
        mid, eq, label = str(item).partition("=")
        mid, label = mid.strip(), label.strip()
        if not eq or not _ID_RE.match(mid) or not label:
            raise DataError(f"--map-id: expected ONTOLOGY_ID=LABEL like /m/0bt9lr=dog, got {item!r}")
        out[mid] = label
    return out


def read_segments(path: str | os.PathLike) -> list[tuple[str, float, float, list[str]]]:
    """Rows of an AudioSet segments CSV: ``(ytid, start_s, end_s, [ontology ids])``.

    Raises:
        DataError: missing/unreadable file, a row without four fields or with a non-numeric
            time (names the file and line), no segments.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: segments CSV not found")
    out = []
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:
            for lineno, row in enumerate(csv.reader(f, skipinitialspace=True), start=1):
                if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                    continue
                if len(row) < 4:
                    raise DataError(f"{p}:{lineno}: expected YTID, start_seconds, end_seconds, positive_labels; "
                                    f"got {len(row)} field(s)")
                try:
                    start, end = float(row[1]), float(row[2])
                except ValueError:
                    raise DataError(f"{p}:{lineno}: start/end seconds must be numbers, got {row[1]!r}, {row[2]!r}") from None
                labels = [x.strip() for x in ",".join(row[3:]).split(",") if x.strip()]
                out.append((row[0].strip(), start, end, labels))
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not a UTF-8 CSV ({e})") from None
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e.strerror or e})") from None
    if not out:
        raise DataError(f"{p}: no segments")
    return out


def _numbers(rest: str) -> list[float]:
    out = []
    for part in rest.split("_"):
        try:
            out.append(float(part))
        except ValueError:
            return []
    return out


def index_audio(folder: str | os.PathLike) -> dict[str, list[tuple[list[float], Path]]]:
    """``{ytid: [(numbers after the id, file)]}`` of the audio files under ``folder``."""
    found: dict[str, list[tuple[list[float], Path]]] = {}
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            stem, suffix = os.path.splitext(name)
            if suffix.lower() not in AUDIO_SUFFIXES:
                continue
            for skip in ((0, 1) if stem.startswith("Y") else (0,)):  # "Y" + id, as AudioSet's own file names
                ytid, rest = stem[skip:skip + _YTID_LEN], stem[skip + _YTID_LEN:]
                if len(ytid) == _YTID_LEN and (rest == "" or rest.startswith("_")):
                    found.setdefault(ytid, []).append((_numbers(rest[1:]) if rest else [], Path(dirpath) / name))
    return found


def _pick(cands: list[tuple[list[float], Path]], start: float) -> Path | None:
    if not cands:
        return None
    timed = [f for nums, f in cands if nums and abs(nums[0] - start) < 1e-3]
    if timed:
        return sorted(timed)[0]
    plain = [f for nums, f in cands if not nums]
    return sorted(plain)[0] if plain else None


def audioset_source(segments: str | os.PathLike, audio: str | os.PathLike, *, preset: str = "cry",
                    mapping: dict[str, str] | None = None, other_label: str | None = None):
    """The clips of an AudioSet segments CSV whose audio is in ``audio`` (see the module docstring).

    Args:
        segments: the segments CSV.
        audio: folder holding the segment files.
        preset: "cry" (cry / not_cry by the cry ontology ids) or "general" (``mapping``).
        mapping: ``{ontology id: label}`` for preset general.
        other_label: label of general-preset segments that match no id (None: leave them out).

    Returns:
        :class:`cryblock.blocks.dataset.prepare.Source` (kind "audioset"); its report holds
        ``segments``, ``with_audio``, ``missing`` (+ the first ``missing_examples``),
        ``unmapped`` and ``labels`` (segments per label).

    Raises:
        DataError: bad CSV, missing folder, preset general without a mapping, no segment with
            audio.
    """
    from cryblock.data import Clip

    from .prepare import Source

    folder = Path(audio)
    if not folder.is_dir():
        raise DataError(f"{folder}: audio folder not found")
    rows = read_segments(segments)
    if preset == "cry":
        positive = set(cry_ids())
    elif not mapping:
        raise DataError("--preset general with --segments needs --map-id ONTOLOGY_ID=LABEL (one or more)")
    names = ontology_names()
    files = index_audio(folder)
    clips, missing, unmapped, labels = [], [], 0, {}
    for ytid, start, _end, ids in rows:
        if preset == "cry":
            label = "cry" if positive & set(ids) else "not_cry"
        else:
            label = next((mapping[i] for i in mapping if i in ids), other_label)
            if label is None:
                unmapped += 1
                continue
        f = _pick(files.get(ytid, []), start)
        if f is None:
            missing.append(f"{ytid}@{start:g}")
            continue
        category = names.get(ids[0], ids[0]) if ids else ""
        clips.append(Clip(path=f.resolve(), label=label, group=ytid, category=category, source="AudioSet"))
        labels[label] = labels.get(label, 0) + 1
    if not clips:
        raise DataError(f"{folder}: none of the {len(rows)} segment(s) of {segments} has an audio file there "
                        "(expected names like YTID.wav, YTID_START.wav or YYTID_START_END.wav)")
    report = {"segments": len(rows), "with_audio": len(clips), "missing": len(missing),
              "missing_examples": missing[:5], "unmapped": unmapped, "labels": dict(sorted(labels.items()))}
    return Source("audioset", Path(segments).resolve(), folder.resolve(), clips, report)
