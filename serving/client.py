"""A Python client for the gRPC server (serving/musicvae.proto).

    from serving.client import MusicVAEClient
    with MusicVAEClient("127.0.0.1:50051") as c:
        c.health()                                        # 'SERVING'
        midis = c.sample("cat-mel_2bar_small", num_outputs=4, temperature=0.5, seed=1)   # list of .mid bytes
        notes = c.interpolate("a.mid", "b.mid", num_outputs=5, notes=True)               # list of note lists
        z = c.encode(["a.mid"])["mu"]

Errors arrive as `grpc.RpcError` with the server's status code and message (`e.code()`, `e.details()`).
From the shell: `python -m serving.client --target 127.0.0.1:50051 sample --num_outputs 3 --output_dir out/`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving import musicvae_pb2 as pb
from serving import musicvae_pb2_grpc as pb_grpc

Input = Union[str, os.PathLike, bytes, dict]  # a .mid path, MIDI bytes, or a note list {"notes": [...], "qpm": 120}


def midi_input(x: Input) -> pb.MidiInput:
    if isinstance(x, dict):
        notes = [pb.Note(**n) for n in x.get("notes", [])]
        return pb.MidiInput(notes=pb.NoteList(notes=notes, qpm=float(x.get("qpm", 120.0))))
    if isinstance(x, (bytes, bytearray)):
        return pb.MidiInput(midi=bytes(x))
    return pb.MidiInput(midi=Path(x).read_bytes())


def _note_list(msg: pb.NoteList) -> dict[str, Any]:
    return {
        "qpm": msg.qpm,
        "notes": [
            {"pitch": n.pitch, "velocity": n.velocity, "start_time": n.start_time, "end_time": n.end_time,
             "instrument": n.instrument, "program": n.program, "is_drum": n.is_drum}
            for n in msg.notes
        ],
    }


def _outputs(reply: pb.Sequences, notes: bool) -> list[Any]:
    return [_note_list(n) for n in reply.notes] if notes else list(reply.midi)


def _fmt(notes: bool) -> int:
    return pb.NOTES if notes else pb.MIDI


def _optional(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


class MusicVAEClient:
    def __init__(self, target: str = "127.0.0.1:50051", timeout: float = 30.0) -> None:
        self.timeout = timeout
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        self.stub = pb_grpc.MusicVAEStub(self.channel)

    def __enter__(self) -> MusicVAEClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def health(self, service: str = "") -> str:
        """grpc.health.v1 status name: SERVING, NOT_SERVING, ..."""
        reply = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def wait_ready(self, timeout: float = 60.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def sample(
        self, config: str = "", num_outputs: int = 1, temperature: float | None = None, length: int | None = None,
        seed: int | None = None, notes: bool = False,
    ) -> list[Any]:
        req = pb.SampleRequest(config=config, num_outputs=num_outputs, format=_fmt(notes),
                               **_optional(temperature=temperature, length=length, seed=seed))
        return _outputs(self.stub.Sample(req, timeout=self.timeout), notes)

    def interpolate(
        self, input_midi_1: Input, input_midi_2: Input, config: str = "", num_outputs: int = 5,
        temperature: float | None = None, length: int | None = None, seed: int | None = None, notes: bool = False,
    ) -> list[Any]:
        req = pb.InterpolateRequest(
            config=config, input_midi_1=midi_input(input_midi_1), input_midi_2=midi_input(input_midi_2),
            num_outputs=num_outputs, format=_fmt(notes), **_optional(temperature=temperature, length=length, seed=seed),
        )
        return _outputs(self.stub.Interpolate(req, timeout=self.timeout), notes)

    def encode(self, inputs: Sequence[Input], config: str = "", seed: int | None = None) -> dict[str, Any]:
        reply = self.stub.Encode(pb.EncodeRequest(config=config, inputs=[midi_input(x) for x in inputs], **_optional(seed=seed)),
                                 timeout=self.timeout)
        return {k: [list(v.values) for v in getattr(reply, k)] for k in ("z", "mu", "sigma")}

    def decode(
        self, z: Sequence[Sequence[float]], config: str = "", temperature: float | None = None, length: int | None = None,
        seed: int | None = None, notes: bool = False,
    ) -> list[Any]:
        req = pb.DecodeRequest(config=config, z=[pb.Vector(values=list(r)) for r in z], format=_fmt(notes),
                               **_optional(temperature=temperature, length=length, seed=seed))
        return _outputs(self.stub.Decode(req, timeout=self.timeout), notes)

    def attribute(
        self, input_midi: Input, attribute: str, strength: float = 1.0, config: str = "", temperature: float | None = None,
        seed: int | None = None, notes: bool = False,
    ) -> list[Any]:
        req = pb.AttributeRequest(config=config, input_midi=midi_input(input_midi), attribute=attribute, strength=strength,
                                  format=_fmt(notes), **_optional(temperature=temperature, seed=seed))
        return _outputs(self.stub.Attribute(req, timeout=self.timeout), notes)

    def groove(
        self, operation: str, input_midi: Input, config: str, temperature: float | None = None, seed: int | None = None,
        notes: bool = False,
    ) -> list[Any]:
        req = pb.GrooveRequest(config=config, operation=operation, input_midi=midi_input(input_midi), format=_fmt(notes),
                               **_optional(temperature=temperature, seed=seed))
        return _outputs(self.stub.Groove(req, timeout=self.timeout), notes)

    def transfer_groove(
        self, groove_midi: Input, score_midi: Input, config: str, temperature: float | None = None, seed: int | None = None,
        notes: bool = False,
    ) -> list[Any]:
        req = pb.TransferGrooveRequest(config=config, groove_midi=midi_input(groove_midi), score_midi=midi_input(score_midi),
                                       format=_fmt(notes), **_optional(temperature=temperature, seed=seed))
        return _outputs(self.stub.TransferGroove(req, timeout=self.timeout), notes)

    def list_models(self) -> list[dict[str, Any]]:
        reply = self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout)
        return [
            {"config": m.config, "source": m.source, "z_size": m.z_size, "max_seq_len": m.max_seq_len,
             "operations": list(m.operations), "attributes": list(m.attributes)}
            for m in reply.models
        ]


def _write(outputs: list[Any], out_dir: str, stem: str) -> None:
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(outputs):
        if isinstance(data, bytes):
            (d / f"{stem}-{i + 1:03d}-of-{len(outputs):03d}.mid").write_bytes(data)
        else:
            (d / f"{stem}-{i + 1:03d}-of-{len(outputs):03d}.json").write_text(json.dumps(data))
    print(f"wrote {len(outputs)} files to {d}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Call the MusicVAE gRPC server.")
    parser.add_argument("--target", default="127.0.0.1:50051", help="host:port of the server")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("health", help="print the health status")
    sub.add_parser("models", help="list the served models as JSON")
    for name in ("sample", "interpolate"):
        p = sub.add_parser(name)
        p.add_argument("--config", default="")
        p.add_argument("--num_outputs", type=int, default=1 if name == "sample" else 5)
        p.add_argument("--temperature", type=float)
        p.add_argument("--seed", type=int)
        p.add_argument("--notes", action="store_true", help="write JSON note lists instead of MIDI")
        p.add_argument("--output_dir", default=".")
        if name == "interpolate":
            p.add_argument("--input_midi_1", required=True)
            p.add_argument("--input_midi_2", required=True)
    args = parser.parse_args(argv)
    with MusicVAEClient(args.target) as c:
        try:
            if args.command == "health":
                print(c.health())
            elif args.command == "models":
                print(json.dumps(c.list_models(), indent=2))
            elif args.command == "sample":
                _write(c.sample(args.config, args.num_outputs, args.temperature, seed=args.seed, notes=args.notes), args.output_dir, "sample")
            else:
                outs = c.interpolate(args.input_midi_1, args.input_midi_2, args.config, args.num_outputs, args.temperature,
                                     seed=args.seed, notes=args.notes)
                _write(outs, args.output_dir, "interpolate")
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
