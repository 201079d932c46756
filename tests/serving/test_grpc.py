"""The gRPC server for real: started by the same `musicvae serve` as the HTTP tests, called with
serving.client and raw grpcio over 127.0.0.1 (health, reflection, operations, error statuses)."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc
import pretty_midi
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from serving import musicvae_pb2 as pb
from serving import musicvae_pb2_grpc as pb_grpc
from serving.client import MusicVAEClient
from serving.schemas import EXAMPLE_NOTES_1, EXAMPLE_NOTES_2, MAX_UPLOAD_BYTES
from tests.serving.conftest import CONFIG, ROOT, Server


@pytest.fixture(scope="module")
def client(server: Server):
    with MusicVAEClient(server.grpc_target, timeout=30) as c:
        c.wait_ready(30)
        yield c


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_health_and_reflection(client: MusicVAEClient, server: Server):
    assert client.health() == "SERVING"
    assert client.health("musicvae.v1.MusicVAE") == "SERVING"
    with grpc.insecure_channel(server.grpc_target) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {"musicvae.v1.MusicVAE", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
        desc = db.FindFileContainingSymbol("musicvae.v1.MusicVAE")
        assert {m.name for m in desc.service[0].method} >= {"Sample", "Interpolate", "Encode", "Decode", "Groove"}


def test_sample_interpolate_encode_decode(client: MusicVAEClient, midi_a: bytes, midi_b: bytes):
    midis = client.sample(CONFIG, num_outputs=3, temperature=0.5, seed=2)
    assert len(midis) == 3 and all(m.startswith(b"MThd") for m in midis)
    assert client.sample(CONFIG, num_outputs=3, temperature=0.5, seed=2) == midis
    notes = client.sample(num_outputs=2, notes=True)
    assert len(notes) == 2 and notes[0]["qpm"] == 120.0
    steps = client.interpolate(midi_a, midi_b, num_outputs=4)
    assert len(steps) == 4
    steps = client.interpolate(EXAMPLE_NOTES_1, EXAMPLE_NOTES_2, num_outputs=3, notes=True)
    assert len(steps) == 3
    enc = client.encode([midi_a])
    assert len(enc["mu"]) == 1 and len(enc["mu"][0]) == 8
    assert len(client.decode(enc["mu"], temperature=0.2)) == 1
    (model,) = client.list_models()
    assert model["config"] == CONFIG and "sample" in model["operations"]


def test_same_seed_same_notes_over_http_and_grpc(client: MusicVAEClient, server: Server):
    import httpx

    body = httpx.post(f"{server.url}/sample", json={"num_outputs": 2, "seed": 9, "format": "notes"}, timeout=30).json()
    assert client.sample(num_outputs=2, seed=9, notes=True) == body["outputs"]


def test_error_statuses(client: MusicVAEClient, server: Server, midi_a: bytes, midi_drums: bytes, midi_long: bytes):
    code, msg = code_of(lambda: client.interpolate(b"MThd\x00\x00", midi_a))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "input_midi_1: malformed MIDI" in msg
    code, msg = code_of(lambda: client.sample("cat-mel_9bar_huge"))
    assert code == grpc.StatusCode.NOT_FOUND and "unknown config" in msg
    code, msg = code_of(lambda: client.sample(num_outputs=65))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "num_outputs" in msg
    code, msg = code_of(lambda: client.sample(temperature=-1.0))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "temperature" in msg
    code, msg = code_of(lambda: client.interpolate(midi_a, midi_a, num_outputs=1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "num_outputs" in msg
    code, msg = code_of(lambda: client.interpolate(midi_drums, midi_a))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no valid input" in msg
    code, msg = code_of(lambda: client.interpolate(midi_a, midi_long))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "valid inputs extracted" in msg
    code, msg = code_of(lambda: client.groove("humanize", midi_a, CONFIG))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "cannot humanize" in msg
    code, msg = code_of(lambda: client.groove("dance", midi_a, CONFIG))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "operation" in msg
    code, msg = code_of(lambda: client.interpolate(b"MThd" + bytes(MAX_UPLOAD_BYTES), midi_a))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "over the" in msg
    code, _ = code_of(lambda: client.interpolate(b"MThd" + bytes(3 * MAX_UPLOAD_BYTES), midi_a))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED  # past the message limit: refused by grpcio
    with grpc.insecure_channel(server.grpc_target) as channel:  # a message with no input at all
        stub = pb_grpc.MusicVAEStub(channel)
        code, msg = code_of(lambda: stub.Interpolate(pb.InterpolateRequest(input_midi_2=pb.MidiInput(midi=midi_a)), timeout=30))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "input_midi_1: missing" in msg
    assert client.health() == "SERVING"


def test_overload_gives_resource_exhausted(busy_server: Server):
    with MusicVAEClient(busy_server.grpc_target, timeout=60) as c:
        c.wait_ready(30)

        def one(_):
            try:
                c.sample(num_outputs=64, notes=True)
                return "OK"
            except grpc.RpcError as e:
                return e.code().name

        with ThreadPoolExecutor(32) as pool:
            codes = list(pool.map(one, range(32)))
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"} and codes.count("RESOURCE_EXHAUSTED") >= 16 and "OK" in codes
        assert c.health() == "SERVING" and len(c.sample()) == 1


def test_client_command_line(server: Server, tmp_path):
    cmd = [sys.executable, "-m", "serving.client", "--target", server.grpc_target]
    out = subprocess.run([*cmd, "sample", "--num_outputs", "2", "--output_dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    files = sorted(tmp_path.glob("*.mid"))
    assert len(files) == 2 and pretty_midi.PrettyMIDI(str(files[0]))
    out = subprocess.run([*cmd, "sample", "--config", "nope"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "NOT_FOUND" in out.stderr


def test_stubs_match_the_proto():
    from serving.codegen import main

    assert main(["--check"]) == 0
