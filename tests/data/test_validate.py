"""MIDI validation: features, the GX suite, quarantine reasons, reports and the CLI, on files written here."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import mido
import numpy as np
import pandas as pd
import pretty_midi
import pytest

from musicvae.data.midi_io import MAX_MIDI_BYTES, write_midi
from musicvae.data.note_sequence import Note, NoteSequence, Tempo, TimeSignature
from musicvae.validate import main, midi_features, validate_midi_files, write_report

GOOD = ["melody_44.mid", "drums.mid", "waltz_34.mid", "tempo_change.mid", "out_of_range.mid"]
# The reason each bad file must be quarantined with (exactly).
BAD = {
    "empty.mid": "empty file",
    "random.mid": "not a Standard MIDI File (no MThd header)",
    "readme.mid": "not a Standard MIDI File (no MThd header)",
    "no_notes.mid": "has at least one note (n_notes=0); lasts 1 s to 2 h (duration_s=0.0)",
}
TRUNCATED_PREFIX = "corrupt MIDI ("


def _write(path: Path, notes: list[tuple[int, float, float]], *, drums: bool = False, program: int = 0,
           meter: tuple[int, int] | None = (4, 4), qpm: float = 120.0) -> None:
    pm = pretty_midi.PrettyMIDI(initial_tempo=qpm)
    if meter:
        pm.time_signature_changes.append(pretty_midi.TimeSignature(*meter, 0))
    inst = pretty_midi.Instrument(program=program, is_drum=drums)
    inst.notes.extend(pretty_midi.Note(100, p, s, e) for p, s, e in notes)
    pm.instruments.append(inst)
    pm.write(str(path))


def _scale(n: int = 16, start_pitch: int = 60, step: float = 0.25) -> list[tuple[int, float, float]]:
    return [(start_pitch + i % 12, i * step, i * step + step * 0.9) for i in range(n)]


def make_corpus(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    _write(root / "melody_44.mid", _scale())  # 16 notes, 4.0 s, pitches 60..71
    _write(root / "drums.mid", [(p, i * 0.25, i * 0.25 + 0.1) for i, p in enumerate([36, 42, 38, 42] * 8)],
           drums=True)
    _write(root / "waltz_34.mid", _scale(12, 67), program=40, meter=(3, 4))
    # A tempo change at 2 s: pretty_midi has no API to write one, write_midi rebuilds the tick scale.
    ns = NoteSequence(
        notes=[Note(60 + i, 90, i * 0.5, i * 0.5 + 0.4) for i in range(8)],
        tempos=[Tempo(0.0, 120.0), Tempo(2.0, 90.0)],
        time_signatures=[TimeSignature(0.0, 4, 4)],
    )
    write_midi(ns, root / "tempo_change.mid")
    _write(root / "out_of_range.mid", [(10, 0.0, 0.5), (60, 0.5, 1.0), (115, 1.0, 1.5)])

    (root / "empty.mid").write_bytes(b"")
    (root / "random.mid").write_bytes(b"\x00" + np.random.default_rng(0).bytes(999))
    (root / "readme.mid").write_text("This is not MIDI, just a text file with the wrong name.\n")
    good = (root / "melody_44.mid").read_bytes()
    (root / "truncated.mid").write_bytes(good[: len(good) // 2])
    pm = pretty_midi.PrettyMIDI()
    pm.instruments.append(pretty_midi.Instrument(program=0))
    pm.write(str(root / "no_notes.mid"))
    return root


def _items(root: Path) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted(root.iterdir())]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("midi") / "corpus")


@pytest.fixture(scope="module")
def report(corpus: Path):
    return validate_midi_files(_items(corpus))


def _failed(report) -> set[str]:
    return {r["column"] or r["expectation"] for r in report.expectation_rows() if not r["success"]}


# ---- features -----------------------------------------------------------------------------------

def test_features_of_good_files(corpus: Path) -> None:
    f = {name: midi_features(name, data) for name, data in _items(corpus)}
    mel = f["melody_44.mid"]
    assert (mel["parses"], mel["error"], mel["n_instruments"], mel["n_notes"]) == (True, "", 1, 16)
    assert (mel["min_pitch"], mel["max_pitch"]) == (60, 71)
    assert (mel["first_qpm"], mel["n_tempo_changes"]) == (120.0, 0)
    assert (mel["time_signatures"], mel["all_meters_16_steps"], mel["programs"]) == ("4/4", True, "0")
    assert mel["duration_s"] == pytest.approx(15 * 0.25 + 0.225, abs=0.01)
    assert (mel["has_drums"], mel["has_melodic"], mel["n_drum_notes"]) == (False, True, 0)

    drums = f["drums.mid"]
    assert (drums["n_drum_notes"], drums["n_melodic_notes"], drums["has_drums"], drums["has_melodic"]) == (
        32, 0, True, False)
    assert (drums["programs"], drums["min_pitch"], drums["max_pitch"]) == ("", 36, 42)

    waltz = f["waltz_34.mid"]
    assert (waltz["time_signatures"], waltz["all_meters_16_steps"], waltz["programs"]) == ("3/4", False, "40")

    tempo = f["tempo_change.mid"]
    assert (tempo["first_qpm"], tempo["n_tempo_changes"]) == (pytest.approx(120.0), 1)

    oor = f["out_of_range.mid"]
    assert (oor["n_pitches_out_of_piano_range"], oor["min_pitch"], oor["max_pitch"]) == (2, 10, 115)


@pytest.mark.parametrize(("meters", "expected"), [
    ([(2, 2)], ("2/2", True, 0)),
    ([(6, 8)], ("6/8", False, 0)),
    ([(4, 4), (3, 4)], ("4/4;3/4", False, 1)),
    ([(4, 4), (4, 4)], ("4/4", True, 0)),  # a restated meter is not a change
])
def test_meter_features(
    tmp_path: Path, meters: list[tuple[int, int]], expected: tuple[str, bool, int]
) -> None:
    pm = pretty_midi.PrettyMIDI()
    for i, (num, den) in enumerate(meters):
        pm.time_signature_changes.append(pretty_midi.TimeSignature(num, den, 2.0 * i))
    inst = pretty_midi.Instrument(0)
    inst.notes.append(pretty_midi.Note(100, 60, 0.0, 4.0))
    pm.instruments.append(inst)
    pm.write(str(tmp_path / "m.mid"))
    f = midi_features("m.mid", (tmp_path / "m.mid").read_bytes())
    assert (f["time_signatures"], f["all_meters_16_steps"], f["n_time_signature_changes"]) == expected


def test_no_time_signature_counts_as_4_4() -> None:
    # pretty_midi always writes a meter, so write the file with mido: one note, no meta events.
    track = mido.MidiTrack([mido.Message("note_on", note=60, velocity=100, time=0),
                            mido.Message("note_off", note=60, velocity=0, time=960)])
    buf = io.BytesIO()
    mido.MidiFile(tracks=[track], ticks_per_beat=480).save(file=buf)
    f = midi_features("bare.mid", buf.getvalue())
    assert (f["time_signatures"], f["all_meters_16_steps"]) == ("", True)
    assert (f["first_qpm"], f["duration_s"]) == (120.0, 1.0)


def test_features_never_raise_on_bad_bytes() -> None:
    oversized = b"MThd" + bytes(MAX_MIDI_BYTES)
    f = midi_features("big.mid", oversized)
    assert f["parses"] is False and f["size_bytes"] == MAX_MIDI_BYTES + 4
    assert f["error"] == f"{MAX_MIDI_BYTES + 4} bytes exceeds the {MAX_MIDI_BYTES}-byte limit for a MIDI file"
    f = midi_features("hdr.mid", b"MThd\x00\x00\x00\x06garbage")
    assert f["parses"] is False and f["error"].startswith("corrupt MIDI (")
    assert f["n_notes"] is None and f["has_drums"] is None


def test_import_does_not_load_great_expectations() -> None:
    code = (
        "import sys, musicvae.validate; print(*(m in sys.modules for m in ('great_expectations', 'pandas')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ---- suite and quarantine ------------------------------------------------------------------------

def test_bad_files_quarantined_with_reasons(report) -> None:
    reasons = dict(report.quarantine)
    assert set(reasons) == set(BAD) | {"truncated.mid"}
    for name, reason in BAD.items():
        assert reasons[name] == reason, name
    assert reasons["truncated.mid"].startswith(TRUNCATED_PREFIX)
    assert sorted(report.accepted) == sorted(GOOD)
    assert len(report.features) == len(GOOD) + len(BAD) + 1


def test_gx_result_reports_failing_expectations(report) -> None:
    assert report.success is False
    # Corpus-level failures (1 of 6 parsed files in 3/4, 1 with pitches off the piano) fail the run
    # without quarantining those files.
    assert _failed(report) == {"parses", "n_notes", "duration_s", "all_meters_16_steps",
                               "n_pitches_out_of_piano_range"}
    assert {"waltz_34.mid", "out_of_range.mid"} <= set(report.accepted)
    by_column = {r["expectation_config"]["kwargs"].get("column"): r for r in report.gx_result["results"]}
    parses = by_column["parses"]["result"]
    assert parses["unexpected_count"] == 4
    names = report.features["name"]
    assert sorted(names[i] for i in parses["unexpected_index_list"]) == [
        "empty.mid", "random.mid", "readme.mid", "truncated.mid"]
    assert by_column["all_meters_16_steps"]["result"]["unexpected_count"] == 1
    assert report.gx_result["statistics"]["unsuccessful_expectations"] == 5
    json.dumps(report.gx_result)  # serialisable as written to validation.json


def test_clean_corpus_passes(corpus: Path) -> None:
    items = [(n, d) for n, d in _items(corpus) if n in ("melody_44.mid", "drums.mid", "tempo_change.mid")]
    r = validate_midi_files(items)
    assert (r.success, r.quarantine, sorted(r.accepted)) == (
        True, [], ["drums.mid", "melody_44.mid", "tempo_change.mid"])


@pytest.mark.parametrize(("family", "quarantined"), [
    ("drums", {"melody_44.mid": "has drum notes (drums) (has_drums=False)"}),
    ("melody", {"drums.mid": "has melodic notes (melody) (has_melodic=False)"}),
    ("trio", {"melody_44.mid": "has drum notes (trio) (has_drums=False)",
              "drums.mid": "has melodic notes (trio) (has_melodic=False)"}),
])
def test_family_expectations(corpus: Path, family: str, quarantined: dict[str, str]) -> None:
    items = [(n, d) for n, d in _items(corpus) if n in ("melody_44.mid", "drums.mid")]
    r = validate_midi_files(items, family=family)
    assert dict(r.quarantine) == quarantined
    assert r.success is False


def test_empty_input_fails_the_row_count_expectation() -> None:
    r = validate_midi_files([])
    assert (r.success, r.quarantine, r.accepted, _failed(r)) == (
        False, [], [], {"expect_table_row_count_to_be_between"})


# ---- reports -------------------------------------------------------------------------------------

def test_write_report(report, corpus: Path, tmp_path: Path) -> None:
    out = write_report(report, tmp_path / "rep")
    payload = json.loads((out / "validation.json").read_text())
    assert payload["summary"]["n_files"] == 10 and payload["summary"]["n_quarantined"] == 5
    assert payload["summary"]["success"] is False and payload["gx_result"]["success"] is False
    with open(out / "quarantine.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["name"]: r["reason"] for r in rows}["empty.mid"] == "empty file" and len(rows) == 5
    features = pd.read_csv(out / "features.csv")
    assert len(features) == 10 and features.set_index("name").at["melody_44.mid", "n_notes"] == 16
    page = (out / "report.html").read_text()
    assert "<h2>Quarantined files</h2>" in page and "not a Standard MIDI File (no MThd header)" in page
    assert "expect_column_values_to_be_in_set" in page

    # Same files, same bytes: nothing run-dependent (timestamps, random ids) in the reports.
    again = write_report(validate_midi_files(_items(corpus)), tmp_path / "again")
    for name in ("validation.json", "quarantine.csv", "features.csv", "report.html"):
        assert (out / name).read_bytes() == (again / name).read_bytes(), name


# ---- command line --------------------------------------------------------------------------------

def test_cli_on_directory(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(corpus), "--report-dir", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "files 10  accepted 5  quarantined 5  suite FAILED" in out
    assert f"quarantined {corpus / 'empty.mid'}: empty file" in out
    rows = list(csv.DictReader(open(tmp_path / "rep" / "quarantine.csv", newline="")))
    assert {Path(r["name"]).name for r in rows} == set(BAD) | {"truncated.mid"}


def test_cli_on_tar_archive(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "melody.tar"
    with tarfile.open(archive, "w") as tar:
        for p in sorted(corpus.iterdir()):
            tar.add(p, arcname=f"melody/{p.name}")
        notes = tmp_path / "NOTES.txt"
        notes.write_text("not a MIDI member, so not validated")
        tar.add(notes, arcname="melody/NOTES.txt")
    assert main([str(archive), "--family", "melody", "--report-dir", str(tmp_path / "rep")]) == 0
    assert "files 10  accepted 4  quarantined 6" in capsys.readouterr().out
    reasons = dict(csv.reader(open(tmp_path / "rep" / "quarantine.csv", newline="")))
    assert reasons[f"{archive}:melody/drums.mid"] == "has melodic notes (melody) (has_melodic=False)"
    assert reasons[f"{archive}:melody/readme.mid"] == "not a Standard MIDI File (no MThd header)"


def test_cli_glob_and_usage_errors(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(corpus / "m*.mid")]) == 0
    assert "files 1  accepted 1  quarantined 0" in capsys.readouterr().out
    assert main([str(corpus / "does_not_exist")]) == 2
    assert "no such file, directory or glob match" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--family", "jazz", str(corpus)])
    assert exc.value.code == 2


@pytest.mark.slow  # a fresh interpreter imports great_expectations: 5-12 s
def test_cli_as_module(corpus: Path, tmp_path: Path) -> None:
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    cmd = [sys.executable, "-m", "musicvae.validate"]
    done = subprocess.run([*cmd, str(corpus / "melody_44.mid"), str(corpus / "empty.mid")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "files 2  accepted 1  quarantined 1" in done.stdout
    assert done.stderr == ""  # no progress bars or warnings
    assert subprocess.run([*cmd, str(empty_dir)], capture_output=True).returncode == 2
