"""DSP stage commands: ``cryblock features`` and ``cryblock dsp serve``.

``cryblock features IN... --out patches.npz`` computes YAMNet log-mel patches of audio files
(directories are searched recursively for :data:`AUDIO_EXTENSIONS`);
``cryblock features --manifest manifest.csv --out patches.npz`` does the same for a dataset
manifest and also stores labels and groups. The ``.npz`` (written atomically) holds:

* ``patches`` float32 ``[N, 96, 64]``; ``clip_index`` int32 ``[N]`` (index into ``paths``);
  ``starts`` float32 ``[N]`` (patch start in seconds within its clip, k · 0.48);
* ``paths`` str ``[C]`` (clips that yielded patches); with ``--manifest`` also ``labels`` and
  ``groups`` str ``[C]``;
* ``skipped`` str ``[S]`` (one ``<file>: <reason>`` line per unreadable file);
* ``params`` 0-d str: JSON of the :class:`~cryblock.params.DspParams` used.

Unreadable files are skipped and reported (count + reasons on stderr); a single input file
that cannot be read is an error (``error: <file>: <problem>``, exit 2), as is an input set of
which nothing could be read.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
import numpy as np

from cryblock.errors import AudioError, CryblockError, DataError
from cryblock.params import DspParams

from .options import FiniteFloat, field_options, params_with

#: File extensions collected from directories (case-insensitive); all are read by libsndfile.
AUDIO_EXTENSIONS = frozenset({".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff",
                              ".aifc", ".au", ".snd", ".w64", ".caf", ".rf64"})

#: DspParams fields settable from the command line: (flag, section.field, type, help).
_DSP_FLAGS = [
    ("--sample-rate", "dsp.sample_rate", float, "Resample to this rate, Hz [16000]."),
    ("--window-seconds", "dsp.stft_window_seconds", float, "STFT window, s [0.025]."),
    ("--hop-seconds", "dsp.stft_hop_seconds", float, "STFT hop, s [0.010]."),
    ("--mel-bands", "dsp.mel_bands", int, "Mel bands [64]."),
    ("--mel-min-hz", "dsp.mel_min_hz", float, "Lowest mel edge, Hz [125]."),
    ("--mel-max-hz", "dsp.mel_max_hz", float, "Highest mel edge, Hz [7500]."),
    ("--log-offset", "dsp.log_offset", float, "log(mel + offset) [0.001]."),
    ("--patch-seconds", "dsp.patch_window_seconds", float, "Patch length, s [0.96]."),
    ("--patch-hop-seconds", "dsp.patch_hop_seconds", float, "Patch hop, s [0.48]."),
]


def collect_audio_files(inputs: list[str | Path]) -> list[Path]:
    """Expand files and directories (recursive, :data:`AUDIO_EXTENSIONS`) into a sorted,
    de-duplicated file list. Explicit files are kept whatever their extension.

    Raises:
        AudioError: an input is an empty string or does not exist, or a directory holds no
            audio file.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for p in inputs:
        if str(p) == "":
            raise AudioError("an input is an empty string (an unset shell variable?); name files or folders")
        p = Path(p)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS and f.is_file())
            if not found:
                raise AudioError(f"{p}: directory holds no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})")
        elif p.exists():
            found = [p]
        else:
            raise AudioError(f"{p}: file not found")
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


def _starts(clip_index: np.ndarray, dsp: DspParams) -> np.ndarray:
    """Start second of each patch within its clip (patches of a clip are consecutive)."""
    if clip_index.size == 0:
        return np.zeros(0, np.float32)
    first = np.r_[True, clip_index[1:] != clip_index[:-1]]
    run_start = np.maximum.accumulate(np.where(first, np.arange(clip_index.size), 0))
    k = np.arange(clip_index.size) - run_start
    return (k * dsp.patch_hop_samples / dsp.sample_rate).astype(np.float32)


def _str_array(items) -> np.ndarray:
    items = [str(s) for s in items]
    return np.array(items, dtype=str) if items else np.zeros(0, dtype="<U1")


@click.command("features")
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path),
              help="Dataset manifest CSV (path,label,group,...) instead of INPUTS; stores labels and groups.")
@click.option("--out", "-o", "out", required=True, type=click.Path(path_type=Path),
              help="Output .npz (written atomically).")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Worker processes [all CPU cores].")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache per-clip patches here [$CRYBLOCK_CACHE or ~/.cache/cryblock, the cache train and demo "
                   "use].")
@click.option("--no-cache", is_flag=True, help="Do not read or write the feature cache.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@click.option("--params", "params_file", type=click.Path(dir_okay=False, path_type=Path),
              help="params.json whose 'dsp' section is used (flags below override it).")
@field_options(_DSP_FLAGS)
def features_cmd(inputs: tuple[str, ...], manifest: Path | None, out: Path, workers: int | None,
                 cache_dir: Path | None, no_cache: bool, quiet: bool, params_file: Path | None,
                 **flags) -> None:
    """Compute YAMNet log-mel patches [N, 96, 64] of audio files or directories (INPUTS) or of a
    --manifest, and save them with clip index, paths and parameters to --out (.npz). Recordings
    are streamed: memory does not grow with their length."""
    import tempfile

    from cryblock.data import Clip, default_cache_dir, load_manifest, patch_files
    from cryblock.progress import Progress
    from cryblock.output import NpzWriter, check_output, npy_row_blocks

    if manifest is not None and inputs:
        raise click.UsageError("give either INPUTS or --manifest, not both")
    if manifest is None and not inputs:
        raise click.UsageError("give audio files/directories (INPUTS) or --manifest")
    if out.is_dir():
        raise CryblockError(f"{out}: --out is a directory; give a .npz file path")
    check_output(out, folder=False, inputs=(*inputs, manifest, params_file))
    dsp = params_with(params_file, flags).dsp
    if no_cache:
        cache_dir = None
    elif cache_dir is None:
        cache_dir = default_cache_dir()
    if cache_dir is not None:
        check_output(cache_dir, folder=True, what="--cache-dir (or $CRYBLOCK_CACHE)")

    if manifest is not None:
        clips = load_manifest(manifest)
    else:
        clips = [Clip(path=f, label="", group="") for f in collect_audio_files(list(inputs))]

    with tempfile.TemporaryDirectory(prefix="cryblock-features-") as work:
        folder = cache_dir if cache_dir is not None else Path(work)
        Path(folder).mkdir(parents=True, exist_ok=True)
        say = None if quiet else (lambda s: click.echo(s, err=True))
        with Progress(len(clips), f"features of {len(clips)} files", say) as prog:
            results = patch_files(clips, dsp, folder, cached=cache_dir is not None, workers=workers,
                                  progress=prog.update)
        skipped = [err for _, _, err in results if err is not None]
        done = [(c, f, n) for c, (f, n, err) in zip(clips, results) if err is None and n]
        if len(clips) == 1 and manifest is None and skipped:
            raise AudioError(skipped[0])  # one file: its problem is the error (exit 2), not a skip
        if not done:
            raise DataError(f"nothing readable: none of {len(clips)} clip(s) could be read; first error: "
                            f"{skipped[0] if skipped else 'no clips'}")
        total = sum(n for _, _, n in done)
        clip_index = np.concatenate([np.full(n, k, np.int32) for k, (_, _, n) in enumerate(done)])
        kept = [c for c, _, _ in done]
        with NpzWriter(out) as w:
            w.add_blocks("patches", (total, *dsp.patch_shape), np.float32,
                         (b for _, f, _ in done for b in npy_row_blocks(f)))
            w.add("clip_index", clip_index)
            w.add("starts", _starts(clip_index, dsp))
            w.add("paths", _str_array(c.path for c in kept))
            w.add("skipped", _str_array(skipped))
            w.add("params", np.array(json.dumps(dataclasses.asdict(dsp), sort_keys=True)))
            if manifest is not None:
                w.add("labels", _str_array(c.label for c in kept))
                w.add("groups", _str_array(c.group for c in kept))

    if skipped:
        click.echo(f"skipped {len(skipped)} of {len(clips)} file(s) that could not be read:", err=True)
        for reason in skipped:
            click.echo(f"  {reason}", err=True)
    click.echo(f"wrote {out}: {total} patches from {len(kept)} file(s)"
               + (f", {len(skipped)} skipped" if skipped else ""), err=True)


@click.group("dsp")
def dsp_group() -> None:
    """DSP block (Edge Impulse custom processing block)."""


@dsp_group.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, envvar="HOST",
              help="Interface to listen on (env HOST, as Edge Impulse's server): loopback by default; 0.0.0.0 "
                   "for every interface (a container, another machine).")
@click.option("--port", type=click.IntRange(0, 65535), default=4446, show_default=True, envvar="PORT",
              help="TCP port, 0 = any free one (env PORT; Edge Impulse expects 4446).")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Requests computed at once [CPU count]; slow or idle connections do not use one.")
@click.option("--max-body-mb", type=FiniteFloat(0.01, 1024), default=16.0, show_default=True,
              help="Largest request body, MiB (larger ones get HTTP 413).")
@click.option("--timeout", "timeout_s", type=click.IntRange(1, 3600), default=30, show_default=True,
              help="Close a connection that sends and reads nothing for this many seconds.")
@click.option("--quiet", "-q", is_flag=True, help="Do not log requests.")
def serve_cmd(host: str, port: int, workers: int | None, max_body_mb: float, timeout_s: float, quiet: bool) -> None:
    """Serve the block over HTTP: GET /, GET /parameters, POST /run, POST /batch."""
    import dataclasses

    from cryblock.blocks.dsp.server import Limits, serve

    limits = dataclasses.replace(Limits(), max_body_bytes=int(max_body_mb * 1024 * 1024), timeout_s=timeout_s,
                                 **({"workers": workers} if workers else {}))
    serve(host, port, quiet=quiet, limits=limits)


def register(group: click.Group) -> None:
    """Add ``features`` and ``dsp serve`` to the ``cryblock`` group."""
    group.add_command(features_cmd)
    group.add_command(dsp_group)
