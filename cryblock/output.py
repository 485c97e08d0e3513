"""Writing outputs safely: every file cryblock writes goes through here.

* :func:`atomic_open` / :func:`atomic_write_bytes` / :func:`atomic_write_text` /
  :func:`atomic_save_npz` / :class:`NpzWriter` write to a temporary file in the destination
  folder and rename it over the destination, so a crash never leaves half a file. The
  destination rules: a **symlink is followed** (its target is replaced, the link kept); a
  **character device or FIFO** (``/dev/null``, ``/dev/stdout``, a named pipe) is written
  through, never replaced; a folder, block device or socket is refused
  (:class:`~cryblock.errors.CryblockError`).
* :func:`check_output` checks an output path before a long job starts.
* :func:`staging_dir` makes a hidden, process-tagged work folder (usual permissions) and removes
  the ones that killed processes left behind.
* :func:`json_safe`, :func:`write_npy_blocks`, :func:`npy_row_blocks`, :func:`npy_shape`: the
  JSON values and streamed ``.npy`` files the stages write and read back.
"""
from __future__ import annotations

import contextlib
import errno
import io as _io
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .errors import CryblockError, file_kind, short_path


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: the process umask, read once at import (reading it means setting it, which is not thread-safe)
_UMASK = _read_umask()


def _output_target(path: str | os.PathLike) -> tuple[Path, os.stat_result | None]:
    """Where a write to ``path`` lands: the symlink's target for a symlink, else the path; and
    its stat (None when it does not exist). Raises CryblockError for a folder, block device or
    socket."""
    dest = Path(path)
    if dest.is_symlink():
        dest = Path(os.path.realpath(dest))
    try:
        st = os.stat(dest)
    except FileNotFoundError:
        return dest, None
    except OSError as e:
        raise CryblockError(f"{path}: cannot write ({e.strerror or e})") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        raise CryblockError(f"{path}: is {file_kind(st.st_mode)}, not a file; refusing to replace it")
    return dest, st


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Context manager: a file object whose content replaces ``path`` atomically when the block
    ends without an exception (temp file in the destination folder + rename; nothing is left
    behind otherwise). Symlinks are followed; character devices and FIFOs are written through
    (see the module docstring). An existing file keeps its permission bits; a new one gets
    ``0666 & ~umask``.

    Raises:
        CryblockError: the destination is a folder/block device/socket, a parent is a file, or
            the folder cannot be written (permissions, read-only file system, /proc …).
    """
    dest, st = _output_target(path)
    if st is not None and not stat.S_ISREG(st.st_mode):  # /dev/null, /dev/stdout, a named pipe
        with open(dest, mode) as f:
            yield f
        return
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".cryblock-{_safe(dest.name)}-{os.getpid()}-", suffix=".tmp", dir=dest.parent)
    except OSError as e:
        raise CryblockError(f"{path}: cannot write there ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        try:
            os.chmod(tmp, stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_UMASK)
            os.replace(tmp, dest)
        except OSError as e:
            raise CryblockError(f"{path}: cannot write ({e.strerror or e})") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _atomic_write(path: str | os.PathLike, data: Any, mode: str) -> Path:
    try:
        with atomic_open(path, mode) as f:
            f.write(data)
    except OSError as e:  # disk full, I/O error while writing
        raise CryblockError(f"{path}: cannot write ({e.strerror or e})") from None
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via :func:`atomic_open`; returns the path."""
    return _atomic_write(path, data, "wb")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` via :func:`atomic_open`; returns the path."""
    return _atomic_write(path, text, "w")


def atomic_save_npz(path: str | os.PathLike, **arrays: Any) -> Path:
    """``np.savez_compressed`` of in-memory arrays to ``path`` via :func:`atomic_open`."""
    with NpzWriter(path) as w:
        for name, a in arrays.items():
            w.add(name, a)
    return Path(path)


#: zlib level of :class:`NpzWriter`: 1, the fastest (``np.savez_compressed`` uses zlib's default 6);
#: log-mel patches are float noise to deflate, so the higher levels cost time and save almost
#: nothing (bench/features.py prints both).
NPZ_LEVEL = 1


class NpzWriter:
    """Write a compressed ``.npz`` (the ``np.savez_compressed`` format: a zip of ``NAME.npy``
    members, readable by ``np.load``) atomically, with arrays that can be streamed in blocks so
    memory does not grow with their size::

        with NpzWriter("out.npz") as w:
            w.add("labels", labels)
            w.add_blocks("patches", (n, 96, 64), np.float32, blocks)  # blocks: iterable of arrays

    Raises:
        CryblockError: as :func:`atomic_open`, or streamed blocks whose total does not fill
            the declared shape.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = path
        self._ctx = atomic_open(path, "wb")

    def __enter__(self) -> "NpzWriter":
        f = self._ctx.__enter__()
        self._zip = zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_DEFLATED, compresslevel=NPZ_LEVEL,
                                    allowZip64=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self._zip.close()
        except BaseException as e:  # a failed close fails the file, never leaves half of it
            if exc is None:
                exc_type, exc, tb = type(e), e, e.__traceback__
        try:
            return bool(self._ctx.__exit__(exc_type, exc, tb))  # renames into place, or removes the temp file
        except OSError as e:
            raise CryblockError(f"{self.path}: cannot write ({e.strerror or e})") from None

    def add(self, name: str, array: Any) -> None:
        """Store one in-memory array as ``name``."""
        a = np.asanyarray(array)
        with self._zip.open(f"{name}.npy", "w", force_zip64=True) as m:
            np.lib.format.write_array(m, a, allow_pickle=False)

    def add_blocks(self, name: str, shape: tuple[int, ...], dtype: Any, blocks: Iterable[np.ndarray]) -> None:
        """Store an array of known ``shape``/``dtype`` from ``blocks`` (C order along axis 0)."""
        dt = np.dtype(dtype)
        want = int(np.prod(shape)) * dt.itemsize
        got = 0
        with self._zip.open(f"{name}.npy", "w", force_zip64=True) as m:
            header = {"descr": np.lib.format.dtype_to_descr(dt), "fortran_order": False, "shape": tuple(shape)}
            np.lib.format.write_array_header_2_0(m, header)
            for b in blocks:
                buf = np.ascontiguousarray(b, dtype=dt).tobytes()
                got += len(buf)
                if got > want:
                    break
                m.write(buf)
        if got != want:
            raise CryblockError(f"{self.path}: array {name!r}: blocks hold {got} bytes, shape {tuple(shape)} "
                                f"needs {want}")


def _same_path(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def check_output(path: str | os.PathLike, *, folder: bool, what: str = "--out",
                 inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Check before a long job that ``path`` can be written, so a mistake fails in a second,
    not after minutes of work. Creates nothing.

    Args:
        path: the output.
        folder: True when the output is a folder (a run or project folder), False for a file.
        what: the option's name for messages.
        inputs: files or folders the job reads (None entries ignored); the output must not be
            one of them (writing it would destroy what is being read).

    Raises:
        CryblockError: ``path`` is one of ``inputs``, exists as the wrong kind (a file given as a
            folder, a folder or device given as a run folder, …), a parent is a file, the nearest
            existing folder is not writable (permissions, a read-only file system, /proc, …), or
            the path cannot be used at all (a name too long, …).
    """
    p = Path(path)
    base = p.parent
    if not folder:
        _check_in_run(p, what, folder=False)
    try:
        for q in inputs:
            if q is not None and str(q) != "" and _same_path(p, Path(q)):
                raise CryblockError(f"{p}: {what} is also an input ({q}); writing it would destroy what is read — "
                                    "choose another path")
        if p.exists() or p.is_symlink():
            if folder and not p.is_dir():
                raise CryblockError(f"{p}: {what} exists and is not a folder")
            if not folder:
                _output_target(p)  # refuses folders, block devices, sockets
                if not Path(os.path.realpath(p)).is_file():
                    return p  # a device or FIFO: written through
        base = p if (folder and p.is_dir()) else p.absolute().parent
        while not base.exists():
            base = base.parent
        if not base.is_dir():
            raise CryblockError(f"{p}: {what}: {base} is a file, not a folder")
        probe = tempfile.mkdtemp(prefix=".cryblock-probe-", dir=base)
        os.rmdir(probe)
        if len(p.absolute().name.encode()) > 255:
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))
    except OSError as e:
        raise CryblockError(f"{short_path(p)}: {what}: cannot write in {short_path(base)} ({e.strerror or e})") from None
    return p


# ----------------------------------------------------------------------------------- run folders
#: Files that make a folder a cryblock run folder (what train/demo, evaluate and tune write).
RUN_MARKERS = ("params.json", "metrics.json", "tune.json")
#: Files and folders cryblock writes into run folders: a command never writes over these in a run
#: folder it was not asked to replace (blocks/learn/export.py's model names, train.py's teacher
#: head, blocks/hub/opinion.py's hub model, calibrate.py's kept params, report.py's reports,
#: tune.py's table, demo's firmware project, evaluate's default folders).
RUN_FILES = frozenset({"params.json", "metrics.json", "report.md", "report.html", "model.tflite",
                       "model_quantized_int8_io.tflite", "saved_model.zip", "teacher_head.npz", "hub_model.npz",
                       "params.before-calibration.json", "tune.json", "tune.md", "fw", "evaluation", "candidates",
                       "best"})


def run_kind(folder: str | os.PathLike) -> str | None:
    """What cryblock command wrote ``folder``: ``"run"`` (train/demo), ``"evaluation"``,
    ``"tune"``, or None when it is not a run folder (no :data:`RUN_MARKERS`)."""
    from .inputs import read_regular_text

    d = Path(folder)
    if (d / "tune.json").is_file():
        return "tune"
    if (d / "metrics.json").is_file():
        try:
            if json.loads(read_regular_text(d / "metrics.json")).get("kind") in ("evaluation", "cross-validation"):
                return "evaluation"
        except (OSError, ValueError, AttributeError):
            pass
        return "run"
    return "run" if (d / "params.json").is_file() else None


def _check_in_run(p: Path, what: str, *, folder: bool) -> None:
    """An output at ``p`` inside a run folder (``p`` itself for a folder output): never through a
    symlink there, and a file output never over one of the run's own files (:data:`RUN_FILES`)."""
    a = p.absolute()
    below = [a] if folder else []
    for q in a.parents:
        if q.is_dir() and run_kind(q) is not None:
            links = [x for x in below if x.is_symlink()]
            if links:
                raise CryblockError(f"{p}: {what}: {links[-1]} is a symlink inside the run folder {q}; cryblock "
                                    "never writes through one — choose another path")
            if not folder and a.parent == q and a.name in RUN_FILES and (a.exists() or a.is_symlink()):
                raise CryblockError(f"{p}: {what} would replace a file of the run in {q}; choose another path")
            return
        below.append(q)


def check_run_output(path: str | os.PathLike, kind: str, *, force: bool = False, what: str = "--out",
                     inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Check the folder a run-writing command (``kind``: ``"run"`` for train/demo,
    ``"evaluation"``, ``"tune"``) is to write, before any work. Creates nothing.

    The rules (what a Keras or Edge Impulse user expects: nothing they did not ask to lose is
    lost):

    * :func:`check_output`'s (writable, not a file, not one of ``inputs``);
    * a symlink inside a run folder is never written through: ``path`` (or a folder between it
      and an enclosing run folder) being one is refused, and so is a symlinked entry inside an
      existing ``path`` that the command would replace (:data:`RUN_FILES`);
    * an existing folder that is not empty (hidden work folders of killed runs aside) is refused
      unless ``force``; with ``force`` only an earlier output of the same ``kind`` or a folder
      that is not a run is replaced — never another command's run (an evaluation never replaces
      a training run's metrics) — and no input may lie inside it.

    Raises:
        CryblockError: one line naming the folder, the rule and the way out (``--force``, another
            folder).
    """
    p = Path(path)
    check_output(p, folder=True, what=what, inputs=inputs)
    _check_in_run(p, what, folder=True)
    if not p.is_dir():
        return p
    entries = [e for e in p.iterdir() if not _STAGING_RE.match(e.name)]
    if not entries:
        return p
    existing = run_kind(p)
    names = ", ".join(sorted(e.name for e in entries)[:4]) + (", …" if len(entries) > 4 else "")
    if not force:
        held = f"holds a {existing}" if existing else "is not empty"
        held = "holds an evaluation" if existing == "evaluation" else held
        raise CryblockError(f"{p}: {what} {held} ({names}); choose a new folder, or pass --force to replace "
                            "what this command writes there")
    if existing is not None and existing != kind:
        raise CryblockError(f"{p}: {what} holds a {existing} folder, not a{'n' if kind[0] in 'aeiou' else ''} "
                            f"{kind}; --force replaces only an earlier {kind} — choose another folder")
    links = sorted(e.name for e in entries if e.name in RUN_FILES and e.is_symlink())
    if links:
        raise CryblockError(f"{p / links[0]}: is a symlink inside the run folder {p}; cryblock never writes "
                            "through one — remove it or choose another folder")
    inside = [q for q in inputs if q is not None and str(q) != "" and p.resolve() in Path(q).resolve().parents]
    if inside:
        raise CryblockError(f"{inside[0]}: is inside {what} {p}, which --force would replace; copy it elsewhere "
                            "first")
    return p


_STAGING_RE = re.compile(r"^\.cryblock-(?P<prefix>[A-Za-z0-9_.-]*?)-(?P<pid>\d+)-[A-Za-z0-9_]+(\.tmp)?$")


def _safe(name: str) -> str:
    """A file name reduced to the characters staging names use (for :data:`_STAGING_RE`)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_staging(parent: str | os.PathLike) -> list[Path]:
    """Remove the hidden work folders (:func:`staging_dir`) and temporary files (:func:`atomic_open`)
    that cryblock processes which no longer run (killed runs) left in ``parent``: names
    ``.cryblock-<what>-<pid>-<random>``, nothing else. Returns what was removed."""
    removed = []
    d = Path(parent)
    if not d.is_dir():
        return removed
    for e in d.iterdir():
        m = _STAGING_RE.match(e.name)
        if not m or int(m.group("pid")) == os.getpid() or _alive(int(m.group("pid"))):
            continue
        if e.is_dir() and not e.is_symlink():
            shutil.rmtree(e, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                e.unlink()
        removed.append(e)
    return removed


def staging_dir(parent: str | os.PathLike, prefix: str = "staging") -> Path:
    """A new hidden work folder ``parent/.cryblock-<prefix>-<pid>-XXXX`` with the usual permissions
    (``0777 & ~umask``, not mkdtemp's 0700, since it may become the output itself), after
    removing those that dead processes left in ``parent`` (:func:`remove_stale_staging`).

    Raises:
        CryblockError: ``parent`` cannot be created or written.
    """
    try:
        Path(parent).mkdir(parents=True, exist_ok=True)
        remove_stale_staging(parent)
        d = Path(tempfile.mkdtemp(prefix=f".cryblock-{_safe(prefix)}-{os.getpid()}-", dir=parent))
        os.chmod(d, 0o777 & ~_UMASK)
    except OSError as e:
        raise CryblockError(f"{parent}: cannot write there ({e.strerror or e})") from None
    return d


def json_safe(o: Any) -> Any:
    """``o`` as plain JSON values: numpy scalars/arrays → Python numbers/lists, tuples → lists,
    NaN and ±inf → None (JSON has no such numbers; ``json.dumps(allow_nan=False)`` then never fails)."""
    if isinstance(o, dict):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, np.ndarray):
        return json_safe(o.tolist())
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, (float, np.floating)):
        f = float(o)
        return f if np.isfinite(f) else None
    return o


def save_npy_bytes(array: np.ndarray) -> bytes:
    """The ``.npy`` file bytes of ``array`` (for :func:`atomic_write_bytes`)."""
    buf = _io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def write_npy_blocks(path: str | os.PathLike, blocks: Iterable[np.ndarray], row_shape: tuple[int, ...],
                     dtype: Any = np.float32) -> int:
    """Write the rows of ``blocks`` (arrays ``[k_i, *row_shape]``) as one ``.npy`` array
    ``[sum k_i, *row_shape]`` via :func:`atomic_open`, with memory bounded by one block (rows are
    spooled to an anonymous temporary file first, since the .npy header holds the row count).
    Returns the number of rows."""
    dt = np.dtype(dtype)
    n = 0
    with tempfile.TemporaryFile() as raw:
        for b in blocks:
            a = np.ascontiguousarray(b, dtype=dt)
            if a.shape[1:] != tuple(row_shape):
                raise ValueError(f"block of shape {a.shape} does not hold rows of shape {tuple(row_shape)}")
            raw.write(a.tobytes())
            n += len(a)
        raw.seek(0)
        try:
            with atomic_open(path, "wb") as f:
                np.lib.format.write_array_header_2_0(
                    f, {"descr": np.lib.format.dtype_to_descr(dt), "fortran_order": False, "shape": (n, *row_shape)})
                shutil.copyfileobj(raw, f, 1 << 20)
        except OSError as e:
            raise CryblockError(f"{path}: cannot write ({e.strerror or e})") from None
    return n


def npy_row_blocks(path: str | os.PathLike, rows: int = 256) -> Iterator[np.ndarray]:
    """Read a C-order ``.npy`` array in blocks of ``rows`` rows (plain reads, not a memory map,
    so resident memory stays at one block)."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        version = fmt.read_magic(f)
        shape, _, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
        per_row = int(np.prod(shape[1:]))
        for start in range(0, shape[0], rows):
            k = min(rows, shape[0] - start)
            yield np.fromfile(f, dtype=dtype, count=k * per_row).reshape(k, *shape[1:])


def npy_shape(path: str | os.PathLike) -> tuple[int, ...] | None:
    """Shape of a complete C-order ``.npy`` file read from its header alone, or None when the file
    is missing, truncated (fewer data bytes than the header promises) or not an .npy file."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(fmt.read_magic(f))
            if read is None:
                return None
            shape, fortran, dtype = read(f)
            complete = os.fstat(f.fileno()).st_size == f.tell() + int(np.prod(shape)) * dtype.itemsize
    except (OSError, ValueError, EOFError):
        return None
    return tuple(shape) if complete and not fortran else None
