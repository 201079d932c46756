"""A tiny corpus in the layout scripts/build_corpus.py writes (manifest.csv + melody.tar), for the component and
pipeline tests: real MIDI melodies written with pretty_midi, plus optional corrupt files."""

import csv
import io
import tarfile
from pathlib import Path

import numpy as np
import pretty_midi

from musicvae.data.corpus import MANIFEST_COLUMNS

TINY_HPARAMS = "batch_size=8,enc_rnn_size=[16],dec_rnn_size=[16],z_size=4"
CORRUPT = {"bad/random.mid": b"not a midi file at all", "bad/truncated.mid": b"MThd\x00\x00\x00\x06\x00\x01"}


def melody_bytes(seed: int, bars: int = 6) -> bytes:
    """A 4/4 line of scale steps and leaps with a few rests at 120 qpm."""
    rng = np.random.default_rng(seed)
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    inst = pretty_midi.Instrument(program=0)
    t, pitch = 0.0, int(rng.integers(55, 70))
    while t < bars * 2.0 - 1e-9:
        dur = float(rng.choice([0.25, 0.25, 0.5]))
        if rng.random() > 0.1:
            inst.notes.append(pretty_midi.Note(velocity=90, pitch=pitch, start=t, end=t + dur))
        pitch = int(np.clip(pitch + rng.choice([-2, -1, 1, 2, 4, -3]), 48, 84))
        t += dur
    pm.instruments.append(inst)
    buf = io.BytesIO()
    pm.write(buf)
    return buf.getvalue()


def write_corpus(out: Path, n_train: int = 10, n_heldout: int = 3, corrupt: bool = False,
                 family: str = "melody") -> Path:
    """out/manifest.csv + out/<family>.tar; with corrupt=True two unreadable files join the train split."""
    out.mkdir(parents=True, exist_ok=True)
    files = {f"good/tune-{i:02d}.mid": (melody_bytes(i), "train" if i < n_train else "heldout")
             for i in range(n_train + n_heldout)}
    if corrupt:
        files.update({name: (data, "train") for name, data in CORRUPT.items()})
    with tarfile.open(out / f"{family}.tar", "w") as tar:
        for name, (data, _) in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_COLUMNS)
        for name, (_, split) in sorted(files.items()):
            writer.writerow([family, name, "test", name.split("/")[0], Path(name).stem, split, "test"])
    return out
