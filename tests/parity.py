"""Helpers for comparing our converters with the tensors Magenta's converters produced.

Fixtures live in ../shared/fixtures/magenta-parity (see its README): one npz per
(config, MIDI file, mode), holding every window's inputs/outputs/controls and the notes
`from_tensors` decoded from the outputs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(os.environ.get("MUSICVAE_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
PARITY = FIXTURES / "magenta-parity"
MIDI_DIR = PARITY / "midi"

requires_parity = pytest.mark.skipif(not PARITY.is_dir(), reason=f"parity fixtures not found at {PARITY}")


@dataclass
class Fixture:
    config: str
    midi: Path
    suffix: str  # "", "__all" or "__infer"
    path: Path

    @property
    def id(self) -> str:
        return f"{self.config}/{self.path.stem}"

    def load(self) -> dict:
        with np.load(self.path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


def fixtures_for(config: str) -> list[Fixture]:
    """Every fixture file of `config` (empty when the fixtures are absent)."""
    folder = PARITY / "tensors" / config
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.npz")):
        stem, _, suffix = path.stem.partition("__")
        found.append(Fixture(config, MIDI_DIR / f"{stem}.mid", f"__{suffix}" if suffix else "", path))
    return found


def summary() -> dict:
    return json.loads((PARITY / "summary.json").read_text())


def windows(expected: dict, kind: str) -> list[np.ndarray]:
    return [expected[f"{kind}_{i}"] for i in range(int(expected["num_windows"]))]


def assert_tensors_equal(result, expected: dict, check_controls: bool = True) -> None:
    """Same number of windows, in the same order, with identical values."""
    n = int(expected["num_windows"])
    assert len(result.inputs) == n, f"expected {n} windows, got {len(result.inputs)}"
    assert list(result.lengths) == [int(x) for x in expected["lengths"]]
    for i in range(n):
        for kind, ours in (("inputs", result.inputs[i]), ("outputs", result.outputs[i])):
            theirs = expected[f"{kind}_{i}"]
            assert ours.shape == theirs.shape, f"{kind}[{i}] shape {ours.shape} != {theirs.shape}"
            np.testing.assert_array_equal(np.asarray(ours, dtype=theirs.dtype), theirs, err_msg=f"{kind}[{i}]")
        if check_controls:
            theirs = expected[f"controls_{i}"]
            ours = np.asarray(result.controls[i])
            assert ours.shape == theirs.shape, f"controls[{i}] shape {ours.shape} != {theirs.shape}"
            np.testing.assert_array_equal(ours.astype(theirs.dtype), theirs, err_msg=f"controls[{i}]")


def assert_round_trip_equal(sequences, expected: dict) -> None:
    """Notes decoded by `to_sequences` match Magenta's `from_tensors` notes, window by window."""
    if "rt_error" in expected:
        pytest.fail(f"Magenta's from_tensors raised {expected['rt_error_type']}: {expected['rt_error_message']}")
    rows = []
    for w, ns in enumerate(sequences):
        for n in ns.notes:
            rows.append((n.pitch, n.velocity, n.program, n.instrument, n.start_time, n.end_time, n.is_drum, w))
    assert len(rows) == len(expected["rt_pitch"]), f"{len(rows)} decoded notes, Magenta decoded {len(expected['rt_pitch'])}"
    if rows:
        cols = list(zip(*rows))
        for name, col in zip(("pitch", "velocity", "program", "instrument"), cols[:4]):
            np.testing.assert_array_equal(np.array(col), expected[f"rt_{name}"], err_msg=name)
        np.testing.assert_allclose(np.array(cols[4]), expected["rt_start"], rtol=0, atol=1e-9, err_msg="start")
        np.testing.assert_allclose(np.array(cols[5]), expected["rt_end"], rtol=0, atol=1e-9, err_msg="end")
        np.testing.assert_array_equal(np.array(cols[6]), expected["rt_is_drum"], err_msg="is_drum")
        np.testing.assert_array_equal(np.array(cols[7]), expected["rt_window"], err_msg="window")
    np.testing.assert_allclose([ns.total_time for ns in sequences], expected["rt_total_time"], atol=1e-9)
    np.testing.assert_allclose([ns.qpm for ns in sequences], expected["rt_qpm"], atol=1e-9)
