"""Audio input and safe output.

Audio:

* :func:`audio_blocks` streams any file libsndfile understands (WAV, FLAC, OGG, …; 8/16/24/32-bit
  PCM or float) as mono float32 blocks at the target rate (soxr, high quality, streaming), so
  memory does not grow with the recording's length; :func:`load_audio` is the whole file at once.
* :func:`prepare_waveform` does the same checks/mixing/resampling for an in-memory array.
* The rules, the same for files and arrays (each broken rule raises
  :class:`~cryblock.errors.AudioError` naming the file): a rate in
  [:data:`MIN_INPUT_RATE`, :data:`MAX_INPUT_RATE`]; no NaN/Inf; a peak of at most
  :data:`MAX_PEAK` (full scale = 1); not silent (peak ≥ :data:`SILENCE_PEAK`).

Output (every file cryblock writes goes through here):

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
"""
from __future__ import annotations

import contextlib
import errno
import io as _io
import os
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .errors import AudioError, CryblockError

#: Lowest input sample rate accepted, Hz: telephone audio is 8 kHz; below 4 kHz no useful band is
#: left for a 125–7500 Hz mel front-end, and a "1 Hz recording" would be resampled 16,000×.
MIN_INPUT_RATE = 4000.0
#: Highest input sample rate accepted, Hz (the top rate of common audio interfaces).
MAX_INPUT_RATE = 384000.0
#: Largest |sample| accepted (full scale = 1.0): float files may overshoot full scale a little
#: (inter-sample peaks, headroom), but a peak beyond +6 dBFS means the samples are on another scale.
MAX_PEAK = 2.0
#: A recording whose peak is below one 16-bit step (2⁻¹⁵, −90.3 dBFS) is silent.
SILENCE_PEAK = 2.0 ** -15
#: Block length of :func:`audio_blocks`, seconds of input audio.
BLOCK_SECONDS = 20.0


# ----------------------------------------------------------------------------------- audio
def _check_rate(rate: Any, source: str) -> float:
    try:
        r = float(rate)
    except (TypeError, ValueError, OverflowError):
        raise AudioError(f"{source}: sample rate must be a number, got {rate!r}") from None
    if not (MIN_INPUT_RATE <= r <= MAX_INPUT_RATE):  # also NaN
        raise AudioError(f"{source}: sample rate {rate!r} Hz is outside [{MIN_INPUT_RATE:g}, "
                         f"{MAX_INPUT_RATE:g}] Hz")
    return r


def _mono_float(x: np.ndarray, source: str) -> np.ndarray:
    """[n] or [n, channels] of any numeric dtype → float32 [n] (integers scaled to [-1, 1))."""
    if x.ndim == 0 or x.ndim > 2:
        raise AudioError(f"{source}: expected samples shaped [n] or [n, channels], got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.number) and not np.issubdtype(x.dtype, np.complexfloating)):
        raise AudioError(f"{source}: samples must be real numbers, got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.integer):
        full_scale = float(np.iinfo(x.dtype).max) + 1.0
        if np.issubdtype(x.dtype, np.unsignedinteger):  # 8-bit WAV is unsigned, centred at 128
            x = (x.astype(np.float64) - full_scale / 2) / (full_scale / 2)
        else:
            x = x.astype(np.float64) / full_scale
    x = x.astype(np.float32, copy=False)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32)
    return x


def _check_block(x: np.ndarray, source: str) -> float:
    """NaN/Inf and scale checks of a mono block; returns its peak |x|."""
    finite = np.isfinite(x)
    if not finite.all():
        raise AudioError(f"{source}: {int(np.count_nonzero(~finite))} sample(s) are NaN or Inf")
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak > MAX_PEAK:
        raise AudioError(f"{source}: peak {peak:g} exceeds {MAX_PEAK:g} × full scale; float audio must be "
                         "in [-1, 1] (samples on another scale?)")
    return peak


def _check_not_silent(peak: float, source: str) -> None:
    if peak == 0.0:
        raise AudioError(f"{source}: all samples are zero (silent or broken recording)")
    if peak < SILENCE_PEAK:
        raise AudioError(f"{source}: silent recording (peak {20 * np.log10(peak):.1f} dBFS, below one "
                         "16-bit step)")


def prepare_waveform(samples: np.ndarray, sample_rate: float, target_rate: float,
                     source: str = "<array>") -> np.ndarray:
    """Mix to mono, validate and resample an in-memory waveform.

    Args:
        samples: float or int array, shape ``[n]`` (mono) or ``[n, channels]``. Integer
            dtypes are scaled to [-1, 1) by their full-scale value (int16 → /32768).
        sample_rate: rate of ``samples`` in Hz, in [:data:`MIN_INPUT_RATE`, :data:`MAX_INPUT_RATE`].
        target_rate: wanted rate in Hz (YAMNet: 16000).
        source: name used in error messages (file path or request id).

    Returns:
        float32 array ``[m]``, mono, at ``target_rate``, values as in the input scale.

    Raises:
        AudioError: empty input, NaN/Inf samples, peak above :data:`MAX_PEAK`, silent
            (below :data:`SILENCE_PEAK`), bad rate or shape.
    """
    x = np.asarray(samples)
    rate = _check_rate(sample_rate, source)
    if x.size == 0:
        raise AudioError(f"{source}: no audio samples (empty file)")
    x = _mono_float(x, source)
    _check_not_silent(_check_block(x, source), source)
    if rate != target_rate:
        import soxr

        n_in = x.shape[0]
        x = soxr.resample(x, rate, target_rate, quality="HQ").astype(np.float32, copy=False)
        if x.size == 0:
            raise AudioError(f"{source}: too short to resample ({n_in} samples at {rate:g} Hz)")
    return np.ascontiguousarray(x)


#: libsndfile's header report of a WAV ``data`` / AIFF ``SSND`` chunk larger than the file.
_SHORT_CHUNK_RE = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.M)


def _open_sound_file(p: Path):
    """Open an audio file for reading after checking it is a non-empty regular file; WAV/AIFF
    files whose header promises more audio than the file holds (an incomplete copy or download:
    libsndfile would silently decode the part that is there) are refused. Streaming writers'
    placeholder sizes (0, ≥ 2³¹ − 4096) are accepted."""
    import soundfile as sf

    try:
        st = p.stat()
    except FileNotFoundError:
        raise AudioError(f"{p}: file not found") from None
    except OSError as e:
        raise AudioError(f"{short_path(p)}: cannot read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioError(f"{p}: is a directory, not an audio file")
    if not stat.S_ISREG(st.st_mode):
        raise AudioError(f"{p}: is {_kind(st.st_mode)}, not a regular audio file")
    if st.st_size == 0:
        raise AudioError(f"{p}: empty file (0 bytes)")
    try:
        f = sf.SoundFile(str(p))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"{p}: cannot decode audio ({str(e).splitlines()[0]})") from None
    except OSError as e:
        raise AudioError(f"{p}: cannot read ({e.strerror or e})") from None
    m = _SHORT_CHUNK_RE.search(f.extra_info or "")
    if m and 0 < int(m.group(2)) < 0x7FFFF000 and int(m.group(3)) < int(m.group(2)):
        f.close()
        raise AudioError(f"{p}: truncated {f.format} file: its header promises {int(m.group(2)):,} bytes of audio, "
                         f"the file holds {int(m.group(3)):,} (an incomplete copy or download?)")
    return f


def audio_blocks(path: str | os.PathLike, target_rate: float = 16000.0,
                 block_seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """Stream an audio file as mono float32 blocks at ``target_rate``.

    Decoding, mixing and soxr resampling (``ResampleStream``, the same output as a one-shot
    ``soxr.resample`` of the whole file) run block by block, so memory stays flat for a
    recording of any length.

    Args:
        path: audio file (anything libsndfile reads: WAV, FLAC, OGG/Vorbis, AIFF, …).
        target_rate: output rate in Hz (default 16000, YAMNet params.py).
        block_seconds: input seconds per block.

    Yields:
        float32 ``[n]`` blocks in [-1, 1] (possibly empty), in order.

    Raises:
        AudioError: missing/unreadable/corrupt/truncated file, directory, empty file, sample
            rate outside [:data:`MIN_INPUT_RATE`, :data:`MAX_INPUT_RATE`], NaN/Inf samples, peak
            above :data:`MAX_PEAK` (raised at the block holding them), or a silent recording
            (raised after the last block). The message names the file.
    """
    import soundfile as sf
    import soxr

    p = Path(path)
    with _open_sound_file(p) as f:
        rate = _check_rate(f.samplerate, str(p))
        if f.frames == 0:
            raise AudioError(f"{p}: no audio samples (empty file)")
        stream = None if rate == target_rate else soxr.ResampleStream(rate, target_rate, 1, dtype="float32",
                                                                      quality="HQ")
        n_block = max(1, int(block_seconds * rate))
        peak, n_in, n_out = 0.0, 0, 0
        while True:
            try:
                data = f.read(n_block, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError, ValueError) as e:
                raise AudioError(f"{p}: cannot decode audio ({str(e).splitlines()[0]})") from None
            last = len(data) < n_block
            x = _mono_float(data, str(p))
            peak = max(peak, _check_block(x, str(p)))
            n_in += len(x)
            if stream is not None:
                x = stream.resample_chunk(x, last=last)
            n_out += len(x)
            yield np.ascontiguousarray(x, dtype=np.float32)
            if last:
                break
    if n_in == 0:
        raise AudioError(f"{p}: no audio samples (empty file)")
    _check_not_silent(peak, str(p))
    if n_out == 0:
        raise AudioError(f"{p}: too short to resample ({n_in} samples at {rate:g} Hz)")


def load_audio(path: str | os.PathLike, target_rate: float = 16000.0) -> np.ndarray:
    """Read a whole audio file as mono float32 at ``target_rate`` (:func:`audio_blocks` joined).

    Returns:
        float32 ``[n]`` in [-1, 1], mono, at ``target_rate``.

    Raises:
        AudioError: as :func:`audio_blocks`; the message names the file.
    """
    return np.concatenate(list(audio_blocks(path, target_rate)))


# ----------------------------------------------------------------------------------- output
def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: the process umask, read once at import (reading it means setting it, which is not thread-safe)
_UMASK = _read_umask()


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISFIFO, "a FIFO")):
        if test(mode):
            return name
    return "not a regular file"


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
        raise CryblockError(f"{path}: is {_kind(st.st_mode)}, not a file; refusing to replace it")
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
        self._zip = zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)
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


def short_path(p: str | os.PathLike, n: int = 120) -> str:
    """A path for a message, shortened in the middle when longer than ``n`` characters."""
    s = str(p)
    return s if len(s) <= n else s[: n // 2] + "…" + s[-n // 2:]


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
