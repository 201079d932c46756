"""`musicvae convert`: deterministic shards, resume, checksums and error reporting, on MIDI written here."""

from __future__ import annotations

import argparse
import csv
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pretty_midi
import pytest

from musicvae.configs import get_config
from musicvae.convert import (
    ShardError,
    add_convert_parser,
    config_family,
    convert,
    load_shards,
    run_convert,
    shard_name,
)

MEL = "cat-mel_2bar_small"


def _melody(path: Path, offset: int, bars: int = 4, numerator: int = 4) -> None:
    pm = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    pm.time_signature_changes.append(pretty_midi.TimeSignature(numerator, 4, 0))
    inst = pretty_midi.Instrument(program=0)
    step = 0.125  # a sixteenth at 120 qpm
    pitches = np.random.default_rng(offset).integers(48, 84, size=bars * numerator)  # no repeating windows
    for i, pitch in enumerate(pitches):  # one quarter note per beat
        inst.notes.append(pretty_midi.Note(100, int(pitch), i * 4 * step, (i * 4 + 3) * step))
    pm.instruments.append(inst)
    pm.write(str(path))


def _drum_loop(path: Path, bars: int = 4) -> None:
    pm = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    pm.time_signature_changes.append(pretty_midi.TimeSignature(4, 4, 0))
    kit = pretty_midi.Instrument(program=0, is_drum=True)
    step = 0.125
    for s in range(bars * 16):
        t = s * step
        if s % 2 == 0:
            kit.notes.append(pretty_midi.Note(80 + s % 5, 42, t, t + step))  # closed hi-hat
        if s % 8 == 0:
            kit.notes.append(pretty_midi.Note(110, 36, t, t + step))  # kick
        if s % 8 == 4:
            kit.notes.append(pretty_midi.Note(100, 38, t, t + step))  # snare
    pm.instruments.append(kit)
    pm.write(str(path))


@pytest.fixture
def midi_dir(tmp_path: Path) -> Path:
    d = tmp_path / "midi"
    (d / "sub").mkdir(parents=True)
    for i in range(5):
        _melody(d / f"mel{i}.mid", offset=i, bars=3 + i)
    _melody(d / "sub" / "mel5.MID", offset=7)  # nested and upper-case suffix: still found
    _melody(d / "waltz.mid", offset=0, numerator=3)  # 3/4: no 2-bar 4/4 windows
    (d / "corrupt.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage")
    (d / "notes.txt").write_text("not MIDI, not picked up from a directory")
    return d


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _direct(config: str, paths: list[Path]) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    conv = get_config(config).new_converter()
    conv.set_mode("eval")
    inputs, outputs, lengths = [], [], []
    for p in paths:
        try:
            t = conv.to_tensors(p)
        except ValueError:
            continue
        inputs += t.inputs
        outputs += t.outputs
        lengths += t.lengths
    return inputs, outputs, lengths


def test_shards_are_identical_for_any_worker_count_and_match_the_converter(midi_dir: Path, tmp_path: Path):
    one = convert(MEL, [midi_dir], tmp_path / "w1", workers=1, shard_size=2)
    two = convert(MEL, [str(midi_dir)], tmp_path / "w2", workers=2, shard_size=2)
    assert (one.num_shards, one.files_total) == (4, 8)
    assert _files(tmp_path / "w1") == _files(tmp_path / "w2")
    assert one.fingerprint == two.fingerprint and one.num_windows == two.num_windows

    assert (one.files_failed, one.files_no_windows, one.files_with_windows) == (1, 1, 6)
    with open(tmp_path / "w1" / "errors.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(Path(r["name"]).name, r["error_type"]) for r in rows] == [("corrupt.mid", "MidiReadError")]

    data = load_shards(tmp_path / "w1")
    names = sorted([*midi_dir.glob("*.mid"), midi_dir / "sub" / "mel5.MID"], key=str)
    inputs, outputs, lengths = _direct(MEL, names)
    assert len(data["inputs"]) == one.num_windows == len(inputs) > 6
    np.testing.assert_array_equal(data["inputs"], np.stack(inputs))
    np.testing.assert_array_equal(data["outputs"], np.stack(outputs))
    np.testing.assert_array_equal(data["lengths"], lengths)
    assert data["inputs"].dtype == np.bool_ and data["lengths"].dtype == np.int32
    assert data["controls"].shape == (len(inputs), 32, 0)
    assert not any("waltz" in s or "corrupt" in s for s in data["sources"])
    for path in (tmp_path / "w1").glob("*.npz"):  # no pickled objects anywhere
        with np.load(path, allow_pickle=False) as shard:
            assert shard["sources"].dtype.kind == "U"
        # np.savez stamps the wall clock into the zip; identical bytes need a fixed stamp.
        assert {i.date_time for i in zipfile.ZipFile(path).infolist()} == {(1980, 1, 1, 0, 0, 0)}

    index = json.loads((tmp_path / "w1" / "index.json").read_text())
    assert (index["input_depth"], index["output_depth"], index["max_seq_len"], index["mode"]) == (
        90,
        90,
        32,
        "eval",
    )
    assert [s["windows"] for s in index["shards"]] and sum(
        s["windows"] for s in index["shards"]
    ) == one.num_windows


def test_resume_rebuilds_only_damaged_or_changed_shards(midi_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    first = convert(MEL, [midi_dir], out, workers=1, shard_size=2)
    before = _files(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.npz")}

    again = convert(MEL, [midi_dir], out, workers=1, shard_size=2)
    assert (again.shards_built, again.shards_skipped) == (0, first.num_shards)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.npz")} == mtimes

    (out / shard_name(1)).unlink()
    with open(out / shard_name(2), "r+b") as f:
        f.truncate(100)
    (out / "index.json").unlink()  # as after a run killed midway: not loadable, but resumable
    with pytest.raises(ShardError, match="no index.json"):
        load_shards(out)
    resumed = convert(MEL, [midi_dir], out, workers=1, shard_size=2)
    assert (resumed.shards_built, resumed.shards_skipped) == (2, first.num_shards - 2)
    assert _files(out) == before
    for i in (0, 3):
        assert (out / shard_name(i)).stat().st_mtime_ns == mtimes[shard_name(i)]

    _melody(midi_dir / "mel0.mid", offset=11)  # changed input: its shard and the fingerprint change
    changed = convert(MEL, [midi_dir], out, workers=1, shard_size=2)
    assert changed.shards_built == 1 and changed.fingerprint != first.fingerprint

    rebuilt = convert(MEL, [midi_dir], out, workers=1, shard_size=2, resume=False)
    assert rebuilt.shards_built == first.num_shards


def test_load_shards_detects_corrupt_and_missing_shards(midi_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    convert(MEL, [midi_dir], out, workers=1, shard_size=4)
    shard = out / shard_name(0)
    data = bytearray(shard.read_bytes())
    data[-30] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="sha256"):
        load_shards(out)
    shard.unlink()
    with pytest.raises(ShardError, match="missing"):
        load_shards(out, verify=False)


def test_train_mode_is_seeded_per_shard(tmp_path: Path):
    d = tmp_path / "long"
    d.mkdir()
    for i in range(3):
        _melody(d / f"m{i}.mid", offset=i, bars=12)
    (d / "m0_copy.mid").write_bytes((d / "m0.mid").read_bytes())
    a = convert(MEL, [d], tmp_path / "a", mode="train", workers=1, shard_size=1, seed=3)
    convert(MEL, [d], tmp_path / "b", mode="train", workers=2, shard_size=1, seed=3)
    c = convert(MEL, [d], tmp_path / "c", mode="train", workers=1, shard_size=1, seed=4)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert a.num_windows == c.num_windows
    assert not np.array_equal(load_shards(tmp_path / "a")["inputs"], load_shards(tmp_path / "c")["inputs"])
    data = load_shards(tmp_path / "a")
    same_file = [data["inputs"][data["sources"] == str(d / name)] for name in ("m0.mid", "m0_copy.mid")]
    assert len(same_file[0]) == 5 and not np.array_equal(*same_file)  # each shard draws its own sample


@pytest.mark.parametrize(
    "config, dtype", [("cat-drums_2bar_small", np.bool_), ("groovae_2bar_humanize", np.float64)]
)
def test_drum_loop(tmp_path: Path, config: str, dtype: type):
    _drum_loop(tmp_path / "loop.mid")
    summary = convert(config, [str(tmp_path / "*.mid")], tmp_path / "out", workers=1)
    data = load_shards(tmp_path / "out")
    inputs, outputs, _ = _direct(config, [tmp_path / "loop.mid"])
    assert summary.num_windows == len(inputs) > 0 and summary.files_failed == 0
    assert data["inputs"].dtype == data["outputs"].dtype == dtype
    np.testing.assert_array_equal(data["inputs"], np.stack(inputs))
    np.testing.assert_array_equal(data["outputs"], np.stack(outputs))


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_corpus_dir_split_and_user_tar(midi_dir: Path, tmp_path: Path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    members = {f"c/mel{i}.mid": (midi_dir / f"mel{i}.mid").read_bytes() for i in range(3)}
    _tar(data_dir / "melody.tar", members)
    with open(data_dir / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["family", "member", "source", "collection", "piece", "split", "licence"])
        for i, name in enumerate(members):
            w.writerow(["melody", name, "test", "c", name, "heldout" if i == 1 else "train", "CC0"])
        w.writerow(["drums", "d/x.mid", "test", "d", "x", "train", "CC0"])  # other family: not looked up

    convert(MEL, data_dir, tmp_path / "train", split="train", workers=1)
    assert sorted(set(load_shards(tmp_path / "train")["sources"])) == ["c/mel0.mid", "c/mel2.mid"]
    assert convert(MEL, data_dir, tmp_path / "all", workers=1).files_total == 3
    with pytest.raises(ValueError, match="split"):
        convert(MEL, [midi_dir], tmp_path / "x", split="train")

    _tar(tmp_path / "mine.tar", {"a.mid": members["c/mel0.mid"], "readme.txt": b"skip me"})
    convert(MEL, [tmp_path / "mine.tar"], tmp_path / "tar_out", workers=1)
    assert set(load_shards(tmp_path / "tar_out")["sources"]) == {f"{tmp_path / 'mine.tar'}/a.mid"}


def test_missing_input_is_an_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        convert(MEL, [tmp_path / "nope"], tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        convert(MEL, [str(tmp_path / "*.mid")], tmp_path / "out")


def test_cli_flags(midi_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    parser = argparse.ArgumentParser()
    add_convert_parser(parser.add_subparsers())
    help_text = parser._subparsers._group_actions[0].choices["convert"].format_help()  # type: ignore[union-attr]
    for flag in (
        "--config",
        "--examples_path",
        "--data_dir",
        "--split",
        "--output_dir",
        "--mode",
        "--workers",
        "--shard_size",
        "--seed",
        "--no-resume",
    ):
        assert flag in help_text
    args = parser.parse_args(
        [
            "convert",
            "--config",
            MEL,
            "--output_dir",
            str(tmp_path / "out"),
            "--workers",
            "1",
            "--examples_path",
            f"{midi_dir / 'mel0.mid'},{midi_dir / 'mel1.mid'}",
            "--examples_path",
            str(midi_dir / "sub"),
        ]
    )
    assert args.func(args) == 0 and args.func is run_convert
    assert json.loads(capsys.readouterr().out)["files_total"] == 3


def test_family_mapping():
    assert [
        config_family(n)
        for n in (
            "cat-mel_2bar_big",
            "hier-mel_16bar",
            "nade-drums_2bar_full",
            "hierdec-trio_16bar",
            "groovae_2bar_hits_control",
        )
    ] == ["melody", "melody", "drums", "trio", "groove"]
    from musicvae.configs import CONFIG_MAP

    for name in CONFIG_MAP:
        config_family(name)  # every config has a family
