"""serving.operations in process, on a tiny model trained in the test session and on real MIDI bytes."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pretty_midi
import pytest

from musicvae.generate import TrainedModel
from serving.operations import (
    Generated,
    InvalidInput,
    ModelNotFound,
    ModelRegistry,
    ModelWorker,
    Operations,
    Overloaded,
    TooLarge,
    Unprocessable,
    Unsupported,
    midi_bytes,
    result,
)
from serving.schemas import (
    EXAMPLE_NOTES_1,
    EXAMPLE_NOTES_2,
    MAX_UPLOAD_BYTES,
    DecodeRequest,
    GrooveOperation,
    InterpolateRequest,
    NoteList,
    OutputFormat,
    SampleRequest,
)
from tests.model.test_generate import prefix
from tests.model.test_magenta_checkpoint import requires_ckpts
from tests.serving.conftest import CONFIG


@pytest.fixture(scope="module")
def ops(checkpoint: Path):
    operations = Operations(ModelRegistry.load([str(checkpoint)]))
    yield operations
    operations.close()


def run(future):
    return result(future, 60)


def test_registry_names_models_by_config_and_refuses_unknown_ones(ops: Operations):
    assert list(ops.registry.models) == [CONFIG]
    with pytest.raises(ModelNotFound, match="unknown config 'nope'.*cat-mel_2bar_small"):
        ops.registry.get("nope")
    with pytest.raises(ModelNotFound, match="'cat-drums_2bar_small' is not served here"):
        ops.registry.get("cat-drums_2bar_small")
    (model,) = ops.models()["models"]
    assert model["config"] == CONFIG and model["z_size"] == 8 and "sample" in model["operations"]


def test_sample_formats(ops: Operations):
    one = run(ops.sample(SampleRequest(num_outputs=1)))
    body, media, headers = one.http_body()
    assert media == "audio/midi" and body.startswith(b"MThd") and ".mid" in headers["content-disposition"]
    pretty_midi.PrettyMIDI(io.BytesIO(body))  # a real MIDI file

    three = run(ops.sample(SampleRequest(num_outputs=3, format="zip")))
    body, media, _ = three.http_body()
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        names = zf.namelist()
        assert len(names) == 3 and all(zf.read(n).startswith(b"MThd") for n in names)
    assert media == "application/zip" and names[0] == f"{CONFIG}_sample-001-of-003.mid"

    notes = run(ops.sample(SampleRequest(num_outputs=2, format="notes", temperature=0.1)))
    assert len(notes.notes) == 2
    for seq in notes.notes:
        NoteList(**seq)  # valid against the input schema too
        assert all(0 <= n["pitch"] <= 127 and n["end_time"] > n["start_time"] for n in seq["notes"])


def test_seeded_sample_matches_trained_model_sample(ops: Operations, checkpoint: Path):
    """A seed reproduces the request, and gives music_vae_generate's notes (batches of min(8, n))."""
    req = SampleRequest(num_outputs=3, seed=11, format="zip")
    a, b = run(ops.sample(req)), run(ops.sample(req))
    assert a.midi == b.midi
    tm = TrainedModel.from_checkpoint(checkpoint, max_batch_size=3)
    assert [midi_bytes(m) for m in tm.sample(3, seed=11)] == a.midi
    assert run(ops.sample(req.model_copy(update={"seed": 12}))).midi != a.midi


def test_concurrent_unseeded_samples_are_batched(ops: Operations):
    before = ops.worker.batches
    gate = threading.Event()
    blocker = ops.worker.submit(lambda jobs: [gate.wait(10)], None)  # hold the worker while requests queue
    futures = [ops.sample(SampleRequest(num_outputs=2, format="notes")) for _ in range(10)]
    gate.set()
    outs = [run(f) for f in futures]
    run(blocker)
    assert all(len(o.notes) == 2 for o in outs)
    assert ops.worker.batches - before == 2  # the blocker, then all ten requests as one batch of 20 rows


def test_interpolate_from_midi_and_note_lists(ops: Operations, midi_a: bytes, midi_b: bytes):
    out = run(ops.interpolate(InterpolateRequest(num_outputs=4, seed=1), midi_a, midi_b))
    assert len(out.midi) == 4 and all(m.startswith(b"MThd") for m in out.midi)
    notes = run(ops.interpolate(InterpolateRequest(num_outputs=3, format="notes"), NoteList(**EXAMPLE_NOTES_1), NoteList(**EXAMPLE_NOTES_2)))
    assert len(notes.notes) == 3


def test_concurrent_interpolations_are_batched_and_a_bad_input_fails_alone(ops: Operations, midi_a: bytes, midi_b: bytes, midi_drums: bytes):
    before = ops.worker.batches
    gate = threading.Event()
    blocker = ops.worker.submit(lambda jobs: [gate.wait(10)], None)  # hold the worker while requests queue
    good = [ops.interpolate(InterpolateRequest(num_outputs=n, format="notes"), midi_a, midi_b) for n in (2, 3, 5)]
    bad = ops.interpolate(InterpolateRequest(num_outputs=4, format="notes"), midi_a, midi_drums)
    last = ops.interpolate(InterpolateRequest(num_outputs=2, format="zip"), midi_b, midi_a)
    gate.set()
    assert [len(run(f).notes) for f in good] == [2, 3, 5]
    with pytest.raises(Unprocessable, match="input_midi_2: no valid input"):
        run(bad)
    assert run(last).http_body()[0].startswith(b"PK")
    run(blocker)
    assert ops.worker.batches - before == 2  # the blocker, then the five requests as one batch
    # Near-greedy (τ = 1e-4: the argmax unless two logits tie), a batched job decodes what it decodes alone.
    cold = InterpolateRequest(num_outputs=3, format="notes", temperature=1e-4)
    alone = run(ops.interpolate(cold.model_copy(update={"seed": 5}), midi_a, midi_b)).notes
    gate = threading.Event()
    blocker = ops.worker.submit(lambda jobs: [gate.wait(10)], None)
    together = [ops.interpolate(cold, x, y) for x, y in ((midi_b, midi_a), (midi_a, midi_b))]
    gate.set()
    run(blocker)
    assert [run(f).notes for f in together][1] == alone


def test_encode_decode_round_trip(ops: Operations, midi_a: bytes, midi_b: bytes):
    enc = run(ops.encode(CONFIG, [midi_a, midi_b], seed=0))
    assert np.asarray(enc["mu"]).shape == (2, 8) and np.all(np.asarray(enc["sigma"]) > 0)
    out = run(ops.decode(DecodeRequest(z=enc["mu"], temperature=0.1, format="notes")))
    assert len(out.notes) == 2
    with pytest.raises(InvalidInput, match="every row must have 8 values"):
        ops.decode(DecodeRequest(z=[[0.0, 1.0]]))


def test_only_attribute_requests_look_for_attribute_vectors(ops: Operations, monkeypatch: pytest.MonkeyPatch):
    looked = []
    monkeypatch.setattr(ops.registry, "attribute_names", lambda config: looked.append(config) or [])
    run(ops.sample(SampleRequest(num_outputs=1)))
    assert looked == []  # the hot path reads no file
    assert not ops.registry.can(CONFIG, "attribute") and looked == [CONFIG]
    assert ops.registry.can(CONFIG, "interpolate") and not ops.registry.can(CONFIG, "humanize")


def test_attribute_shift_with_assigned_vectors(ops: Operations, midi_a: bytes):
    tm = ops.registry.get(CONFIG)
    tm.attribute_vectors = {"note_density": np.ones(8, np.float32)}
    try:
        out = run(ops.attribute(CONFIG, midi_a, "note_density", 2.0, 0.5, 1, OutputFormat.notes))
        assert len(out.notes) == 1
        with pytest.raises(InvalidInput, match="unknown attribute 'loudness'"):
            ops.attribute(CONFIG, midi_a, "loudness", 1.0, 0.5, None, OutputFormat.midi)
    finally:
        del tm.attribute_vectors
    with pytest.raises(Unsupported, match="cannot attribute"):
        ops.attribute(CONFIG, midi_a, "note_density", 1.0, 0.5, None, OutputFormat.midi)


# --- bad inputs: each a ServingError with its status and a message naming the problem -------------------


def test_bad_inputs(ops: Operations, midi_a: bytes, midi_long: bytes, midi_drums: bytes):
    cases = [
        (lambda: ops.interpolate(InterpolateRequest(), b"MThd\x00\x00", midi_a), InvalidInput, "input_midi_1: malformed MIDI"),
        (lambda: ops.interpolate(InterpolateRequest(), midi_a, b"RIFF....WAVE"), InvalidInput, "input_midi_2 is not a Standard MIDI File"),
        (lambda: ops.interpolate(InterpolateRequest(), b"", midi_a), InvalidInput, "input_midi_1 is empty"),
        (lambda: ops.interpolate(InterpolateRequest(), b"MThd" + bytes(MAX_UPLOAD_BYTES), midi_a), TooLarge, "over the"),
        (lambda: ops.interpolate(InterpolateRequest(), midi_drums, midi_a), Unprocessable, "input_midi_1: no valid input"),
        (lambda: ops.interpolate(InterpolateRequest(), midi_a, midi_long), Unprocessable, r"input_midi_2: \d+ valid inputs"),
        (lambda: ops.sample(SampleRequest(config="nope")), ModelNotFound, "unknown config"),
        (lambda: ops.sample(SampleRequest(length=10_000 // 10)), InvalidInput, "over cat-mel_2bar_small's max_seq_len"),
        (lambda: ops.sample(SampleRequest(num_outputs=2, format="midi")), InvalidInput, "ask for 'zip' or 'notes'"),
        (lambda: ops.groove(CONFIG, GrooveOperation.humanize, midi_a, 1.0, None, OutputFormat.zip), Unsupported, "cannot humanize"),
        (lambda: ops.transfer_groove(CONFIG, midi_a, midi_a, 1.0, None, OutputFormat.zip), Unsupported, "cannot transfer_groove"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            run(call())
        assert 400 <= error.http_status < 500


def test_full_queue_is_refused_at_once():
    worker = ModelWorker(max_queue=2)
    gate, running = threading.Event(), threading.Event()
    held = [worker.submit(lambda jobs: [running.set(), gate.wait(10)][1:], None)]
    assert running.wait(10)
    held += [worker.submit(lambda jobs: [True], None) for _ in range(2)]  # queued behind the running one
    with pytest.raises(Overloaded, match="server busy"):
        for _ in range(3):
            worker.submit(lambda jobs: [None], None)
    gate.set()
    assert all(run(f) for f in held)
    worker.close()


def test_the_worker_waits_briefly_to_refill_a_batch_as_large_as_the_last():
    sizes = []
    worker = ModelWorker(max_batch_rows=8, on_batch=sizes.append, max_wait=5.0)

    def echo(jobs):
        return [job.payload for job in jobs]

    assert run(worker.submit(echo, 0, key="k")) == 0  # last batch: one row, so no waiting at all
    gate = threading.Event()
    blocker = worker.submit(lambda jobs: [gate.wait(10)], None)
    first = [worker.submit(echo, i, key="k") for i in range(4)]
    gate.set()
    assert [run(f) for f in first] == [0, 1, 2, 3]  # one batch of four
    start = time.monotonic()
    late = [worker.submit(echo, 10, key="k")]
    time.sleep(0.3)  # the worker holds the one queued job, waiting for a batch of four again
    late += [worker.submit(echo, 10 + i, key="k") for i in range(1, 4)]
    assert [run(f) for f in late] == [10, 11, 12, 13]
    assert time.monotonic() - start < 5.0  # it started once four were queued, not after max_wait
    run(blocker)
    assert sizes == [1, 1, 4, 4]
    alone = ModelWorker(max_wait=0.0, on_batch=sizes.append)  # max_wait 0: greedy, as before
    assert run(alone.submit(echo, 1, key="k")) == 1
    worker.close()
    alone.close()


def test_generated_http_body_notes():
    g = Generated(CONFIG, "sample", OutputFormat.notes, notes=[{"qpm": 120.0, "notes": []}])
    body, media, _ = g.http_body()
    assert media == "application/json" and b'"outputs":[{"qpm":120.0' in body


# --- GrooVAE, on Magenta's tiny fixture checkpoints (skipped without them) ---------------------------


@requires_ckpts
def test_groove_operations_on_groovae_models():
    from tests.model.test_generate import BEAT, drums

    refs = [f"{m}={prefix(m)}" for m in ("groovae_2bar_humanize", "groovae_2bar_hits_control_tfds")]
    ops = Operations(ModelRegistry.load(refs))
    try:
        humanize = ops.registry.operations_of("groovae_2bar_humanize")
        assert "humanize" in humanize and "tap_to_drums" not in humanize
        assert ops.registry.operations_of("groovae_2bar_hits_control_tfds")[-1] == "transfer_groove"
        beat, score = midi_bytes(drums(2, BEAT)), midi_bytes(drums(4, {36: [0, 6, 10], 38: [4, 12]}))
        out = run(ops.groove("groovae_2bar_humanize", GrooveOperation.humanize, beat, 1.0, 0, OutputFormat.notes))
        assert len(out.notes) == 1 and all(n["is_drum"] for n in out.notes[0]["notes"])
        out = run(ops.transfer_groove("groovae_2bar_hits_control_tfds", beat, score, 1.0, 0, OutputFormat.zip))
        assert len(out.midi) == 2  # one per 2-bar window of the score
        with pytest.raises(Unsupported, match="cannot tap_to_drums"):
            ops.groove("groovae_2bar_humanize", GrooveOperation.tap_to_drums, beat, 1.0, None, OutputFormat.zip)
        with pytest.raises(Unsupported, match="cannot sample"):  # needs hits as controls
            ops.sample(SampleRequest(config="groovae_2bar_hits_control_tfds"))
    finally:
        ops.close()
