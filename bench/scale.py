"""Scale of ``cryblock prepare`` and of the dataset reader: throughput, peak memory, shard size.

    CRYBLOCK_TEACHER=../shared/models/yamnet.tflite CRYBLOCK_DATA=../shared/data \\
        nice -n 10 .venv/bin/python bench/scale.py --out /tmp/scale [--runs w1,w2,ray,x4,read]

Every measurement is a fresh child process; the resident memory of its whole process tree
(the CLI, its pool workers, Ray's processes) is summed and sampled every 0.1 s, and the peak is
printed with the largest single process. Runs:

* ``w1``/``w2`` — ``cryblock prepare`` of the manifest with 1 / 2 local workers (fresh folders):
  patches per second of the features phase and of the teacher phase (each phase's patches over
  its wall time), peak memory, shard bytes per hour of audio; ``w2``'s shards are compared with
  ``w1``'s byte for byte;
* ``ray`` — ``--runner ray --workers 2``: a private local Ray instance with 2 CPUs (2 feature
  tasks / 2 teacher actors); compared with ``w1``;
* ``x4`` — the manifest replicated 4 times (each copy its own groups, same audio), 2 workers:
  flat memory is the point;
* ``read`` — for the ``w1`` and ``x4`` datasets: open (all checksums), the index, every row
  through ``Dataset.read_rows`` and every row through ``Dataset.tf_dataset`` (shuffle buffer
  4096, batches of 256).
* ``train`` / ``train-x4`` — ``cryblock train --dataset`` (``--epochs`` from ``--train-epochs``)
  on the ``w1`` dataset and on its ×4 copy: peak RSS of the whole run and of its training phase
  (until the line "hub model data …": the training split streamed, early stopping on the streamed
  validation split; the hub model's bounded sample of embeddings, the validation and test splits in
  memory, export and evaluation come after).
  Without an ``x4`` dataset the ×4 copy is made from ``w1`` by rewriting its shards
  (:func:`replicate_dataset`: each copy its own clip ids, groups ``g#k`` and recording ids, the
  same patches and teacher outputs): what ``prepare`` of the ×4 manifest writes, in minutes
  instead of half an hour.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

_PHASE_RE = re.compile(r"^(features|teacher): ([\d,]+) patches in ([\d.]+) s")
#: Filled by :func:`run_tree`'s ``marks``.
marks_mb: dict[str, float] = {}


def run_tree(cmd: list[str], env: dict | None = None, marks: dict[str, str] | None = None,
             pss: bool = False, stop_at: str | None = None) -> tuple[str, float, float, float, int]:
    """Run ``cmd``; (output, peak summed RSS MB of its process tree, peak single-process RSS MB,
    wall seconds, exit code). ``marks`` ``{name: line prefix}``: the peak summed RSS so far when
    the first output line with that prefix appeared is stored in ``marks_mb[name]`` (MB), and
    ``marks_mb[name + " one"]`` the largest single process's. With ``pss`` also the peak summed
    PSS (``marks_mb["pss"]``: forked workers' shared pages counted once, not per process).
    ``stop_at``: the name of a mark at which the command is terminated (SIGTERM)."""
    import psutil

    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    root = psutil.Process(p.pid)
    peak_sum = peak_one = 0
    chunks: list[str] = []

    def read() -> None:
        for line in p.stdout:
            chunks.append(line)
            for name, prefix in (marks or {}).items():
                if name not in marks_mb and line.startswith(prefix):
                    marks_mb[name], marks_mb[name + " one"] = peak_sum / 2**20, peak_one / 2**20
                    if name == stop_at:
                        p.terminate()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    peak_pss = 0
    while p.poll() is None:
        total = total_pss = 0
        try:
            for q in [root, *root.children(recursive=True)]:
                try:
                    if pss:
                        full = q.memory_full_info()
                        rss = full.rss
                        total_pss += full.pss
                    else:
                        rss = q.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += rss
                peak_one = max(peak_one, rss)
        except psutil.NoSuchProcess:
            pass
        peak_sum = max(peak_sum, total)
        peak_pss = max(peak_pss, total_pss)
        marks_mb["pss"] = peak_pss / 2**20
        time.sleep(0.1)
    reader.join()
    return "".join(chunks), peak_sum / 2**20, peak_one / 2**20, time.perf_counter() - t0, p.returncode


def prepare(manifest: Path, out: Path, *extra: str) -> dict:
    """One ``cryblock prepare`` run measured; its phase figures parsed from its output."""
    out_text, mb, one, wall, code = run_tree([sys.executable, "-m", "cryblock.cli", "prepare", "--data", str(manifest),
                                              "--out", str(out), *extra])
    if code != 0:
        raise SystemExit(f"prepare failed (exit {code}):\n{out_text[-3000:]}")
    phases = {m.group(1): (int(m.group(2).replace(",", "")), float(m.group(3)))
              for m in map(_PHASE_RE.match, out_text.splitlines()) if m}
    meta = json.loads((out / "dataset.json").read_text())
    size = sum(s[p]["bytes"] for s in meta["shards"] for p in ("patches", "teacher"))
    return {"phases": phases, "peak_mb": mb, "peak_one_mb": one, "wall": wall, "rows": meta["rows"],
            "hours": meta["audio_seconds"] / 3600, "bytes": size, "out": out}


def files(d: Path) -> dict[str, bytes]:
    return {f"{p.parent.name}/{p.name}": p.read_bytes() for p in sorted(d.glob("*/part-*.parquet"))}


def read_child(path: str) -> None:
    """(child) Open, index, read every row, stream every row; print the figures as JSON."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from cryblock.blocks.dataset.shards import open_dataset

    t0 = time.perf_counter()
    ds = open_dataset(path)
    t_open = time.perf_counter() - t0
    t0 = time.perf_counter()
    ix = ds.index()
    t_index = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = 0
    for b in ds.read_rows():
        n += len(b.rows)
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    m = 0
    for batch in ds.tf_dataset(shuffle_buffer=4096, seed=0).batch(256):
        m += int(batch["row"].shape[0])
    t_tf = time.perf_counter() - t0
    print(json.dumps({"rows": ds.rows, "index_rows": len(ix), "read": n, "streamed": m, "open_s": t_open,
                      "index_s": t_index, "read_s": t_read, "tf_s": t_tf}))


def replicate_dataset(src: Path, out: Path, times: int) -> Path:
    """The dataset ``src`` ``times`` over, as ``prepare`` of the replicated manifest would write it:
    copy k's clip ids offset by k × clips, its groups ``GROUP#k`` and its recording ids (sha1)
    ``SHA1#k`` (so the copies are distinct recordings in distinct groups), the same patches and
    teacher outputs; shards rewritten with the dataset's writer (fixed row groups, checksums)."""
    import pyarrow.parquet as pq
    import pyarrow.compute as pc

    from cryblock.blocks.dataset import shards as S

    meta = json.loads((src / S.META_NAME).read_text())
    if out.exists():
        shutil.rmtree(out)
    (out / S.PATCH_DIR).mkdir(parents=True)
    (out / S.TEACHER_DIR).mkdir()
    n_clips, n_shards, shards = meta["input"]["clips"], len(meta["shards"]), []
    for k in range(times):
        for i, sh in enumerate(meta["shards"]):
            name = f"part-{k * n_shards + i:05d}"
            rec = json.loads(json.dumps(sh))
            rec.update(name=name, clip_start=sh["clip_start"] + k * n_clips, clip_end=sh["clip_end"] + k * n_clips)
            for part in ("patches", "teacher"):
                t = pq.read_table(src / sh[part]["file"])
                cols = {c: t.column(c) for c in t.column_names}
                cols["clip_id"] = pc.add(t.column("clip_id"), k * n_clips).cast(t.schema.field("clip_id").type)
                if part == "patches":
                    for c in ("group", "sha1"):
                        cols[c] = pc.binary_join_element_wise(t.column(c), f"#{k}", "")
                f = f"{part if part == 'patches' else S.TEACHER_DIR}/{name}.parquet"
                with S.ShardWriter(out / f, t.schema) as w:
                    w.write(cols)
                rec[part].update(file=f, bytes=w.bytes, sha256=w.sha256, key=f"{sh[part]['key']}#{k}")
            shards.append(rec)
    meta.update(shards=shards, rows=meta["rows"] * times, audio_seconds=meta["audio_seconds"] * times,
                input={**meta["input"], "clips": n_clips * times, "file": f"{meta['input']['file']} ×{times}"})
    S.write_meta(out, meta)
    return out


def train_dataset(dataset: Path, out: Path, epochs: int, train_only: bool = False) -> dict:
    """One ``cryblock train --dataset`` measured: peak RSS of the run and of its training phase
    (``train_only``: the run is stopped when the training phase ends; no metrics then)."""
    marks_mb.clear()
    text, mb, one, wall, code = run_tree([sys.executable, "-m", "cryblock.cli", "train", "--dataset", str(dataset),
                                          "--out", str(out), "--epochs", str(epochs), "--force"],
                                         marks={"train": "hub model data"}, pss=True,
                                         stop_at="train" if train_only else None)
    if train_only and "train" in marks_mb:
        split = re.search(r"split by group: train \d+ clips / ([\d]+) windows", text)
        win = re.search(r"epoch +1/\d+ .* (\d+) windows", text)
        return {"peak_mb": mb, "one_mb": one, "pss_mb": marks_mb.get("pss", float("nan")), "train_mb": marks_mb["train"],
                "wall": wall, "metrics": None, "train_rows": int(split.group(1)), "windows": int(win.group(1))}
    if code != 0:
        raise SystemExit(f"train --dataset failed (exit {code}):\n{text[-3000:]}")
    m = json.loads((out / "metrics.json").read_text())
    return {"peak_mb": mb, "one_mb": one, "pss_mb": marks_mb.get("pss", float("nan")),
            "train_mb": marks_mb.get("train", float("nan")), "wall": wall, "metrics": m}


def replicate(manifest: Path, out: Path, times: int) -> Path:
    """The manifest ``times`` over with absolute paths, each copy's groups renamed (``g#k``)."""
    with manifest.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "group", "category", "source"])
        for k in range(times):
            for r in rows:
                w.writerow([str((manifest.parent / r["path"]).resolve()), r["label"], f"{r['group']}#{k}",
                            r.get("category", ""), r.get("source", "")])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("CRYBLOCK_DATA"), help="folder with manifest.csv")
    ap.add_argument("--out", required=True, help="work folder for the datasets (several GB)")
    ap.add_argument("--runs", default="w1,w2,ray,x4,read", help="which runs (comma-separated)")
    ap.add_argument("--replicate", type=int, default=4)
    ap.add_argument("--train-epochs", type=int, default=3, help="epochs of the train runs (memory does not depend on them)")
    ap.add_argument("--train-phase-only", action="store_true",
                    help="stop the train runs when their training phase ends (before export and evaluation)")
    ap.add_argument("--read-child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.read_child:
        read_child(a.read_child)
        return 0
    if not a.data:
        ap.error("set CRYBLOCK_DATA or pass --data")
    runs = set(a.runs.split(","))
    work = Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    manifest = Path(a.data) / "manifest.csv"
    print(f"machine: {os.cpu_count()} CPUs (shared with other work: figures are pessimistic)")
    print("| run | patches | audio | features patches/s | teacher patches/s | wall | peak RSS (process tree) | "
          "largest process | shards | MB per hour of audio |\n|---|---|---|---|---|---|---|---|---|---|")
    results = {}

    def row(name: str, r: dict, note: str = "") -> None:
        f, t = r["phases"].get("features"), r["phases"].get("teacher")
        rate = (lambda ph: f"{ph[0] / ph[1]:,.0f}" if ph and ph[1] > 0 and ph[0] else "–")
        print(f"| {name} | {r['rows']:,} | {r['hours']:.2f} h | {rate(f)} | {rate(t)} | {r['wall']:.0f} s | "
              f"{r['peak_mb']:,.0f} MB | {r['peak_one_mb']:,.0f} MB | {r['bytes'] / 1e6:,.0f} MB | "
              f"{r['bytes'] / 1e6 / r['hours']:,.0f} |{note}", flush=True)

    for name, extra, man in (("w1", ("--workers", "1"), manifest), ("w2", ("--workers", "2"), manifest),
                             ("ray", ("--runner", "ray", "--workers", "2"), manifest),
                             ("x4", ("--workers", "2"), None)):
        if name not in runs:
            continue
        if man is None:
            man = replicate(manifest, work / f"manifest-x{a.replicate}.csv", a.replicate)
        out = work / name
        if out.exists():
            shutil.rmtree(out)
        results[name] = r = prepare(man, out, *extra)
        note = ""
        if name in ("w2", "ray") and "w1" in results:
            note = " shards = w1's" if files(out) == files(results["w1"]["out"]) else " **shards differ from w1's**"
        label = {"w1": "local, 1 worker", "w2": "local, 2 workers", "ray": "Ray local instance, 2 workers",
                 "x4": f"local, 2 workers, manifest ×{a.replicate}"}[name]
        row(label, r, note)
    if "read" in runs:
        print("\n| dataset | rows | open + verify | index | read_rows (all) | tf.data (all, shuffle 4096) | "
              "peak RSS (process tree) |\n|---|---|---|---|---|---|---|")
        for name in ("w1", "x4"):
            if not (work / name / "dataset.json").is_file():
                continue
            text, mb, _one, _wall, code = run_tree([sys.executable, __file__, "--out", str(work), "--read-child",
                                                     str(work / name)])
            if code != 0:
                raise SystemExit(f"reading failed:\n{text[-3000:]}")
            f = json.loads(text.strip().splitlines()[-1])
            assert f["read"] == f["streamed"] == f["rows"] == f["index_rows"]
            print(f"| {name} | {f['rows']:,} | {f['open_s']:.1f} s | {f['index_s']:.1f} s | "
                  f"{f['rows'] / f['read_s']:,.0f} rows/s | {f['rows'] / f['tf_s']:,.0f} rows/s | {mb:,.0f} MB |",
                  flush=True)
    if runs & {"train", "train-x4"}:
        print(f"\n| `train --dataset` ({a.train_epochs} epochs) | rows | train windows / epoch | wall | peak RSS, "
              "training phase (process tree) | peak RSS, whole run: largest process | whole run: process tree, PSS | "
              "whole run: process tree, RSS sum | float window AUC |\n|---|---|---|---|---|---|---|---|---|")
        for name in ("train", "train-x4"):
            if name not in runs:
                continue
            ds = work / "w1"
            if name == "train-x4":
                ds = work / "x4" if (work / "x4" / "dataset.json").is_file() else work / f"w1-x{a.replicate}"
                if not (ds / "dataset.json").is_file():
                    t0 = time.perf_counter()
                    replicate_dataset(work / "w1", ds, a.replicate)
                    print(f"(made {ds} from w1 in {time.perf_counter() - t0:.0f} s)", flush=True)
            r = train_dataset(ds, work / f"run-{name}", a.train_epochs, a.train_phase_only)
            m = r["metrics"]
            if m is None:
                print(f"| {ds.name} | {r['train_rows']:,} training | {r['windows']:,} | {r['wall']:.0f} s (stopped after "
                      f"training) | {r['train_mb']:,.0f} MB | – | – | – | – |", flush=True)
                continue
            print(f"| {ds.name} | {m['data']['patches']:,} | {m['training']['history'][0]['windows']:,} | "
                  f"{r['wall']:.0f} s | {r['train_mb']:,.0f} MB | {r['one_mb']:,.0f} MB | {r['pss_mb']:,.0f} MB | "
                  f"{r['peak_mb']:,.0f} MB | {m['float']['window']['auc']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
