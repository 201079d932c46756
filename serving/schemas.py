"""Request and response shapes shared by the HTTP service and the gRPC server.

Field names follow `music_vae_generate`'s flags (`config`, `num_outputs`, `temperature`, `input_midi_1`,
`input_midi_2`), so a request reads like the command it replaces. The limits here are the only copy:
the BentoML endpoints use these annotated types in their signatures (pydantic checks them and BentoML
answers 400 with the field and the reason), and the gRPC server validates its messages through the same
models (INVALID_ARGUMENT with the same text).
"""

from __future__ import annotations

import os
from enum import Enum
from typing import Annotated

from pydantic import BaseModel, Field, field_validator, model_validator

from musicvae.data.midi_io import MAX_DURATION_SECONDS


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


# --- limits -------------------------------------------------------------------------------------------

MAX_OUTPUTS = 64  # samples or interpolation steps per request
MAX_TEMPERATURE = 10.0  # far past where samples are noise; bounds nothing expensive, catches typos
MAX_SEED = 2**63 - 1
MAX_NOTES = 20_000  # per note list: a 16-bar trio has a few hundred
MAX_Z = 64  # latent vectors per decode request
# One MIDI upload (HTTP bodies are capped at twice this plus form overhead, gRPC messages likewise).
MAX_UPLOAD_BYTES = _env_int("MUSICVAE_MAX_UPLOAD_BYTES", 1024 * 1024)
DEFAULT_CONFIG = "cat-mel_2bar_small"
EXAMPLE_TEMPERATURE = 0.5  # music_vae_generate's default


class OutputFormat(str, Enum):
    midi = "midi"  # one Standard MIDI File (num_outputs must be 1)
    zip = "zip"  # a zip of `<config>_<mode>-NNN-of-NNN.mid` files
    notes = "notes"  # JSON: {"outputs": [NoteList, ...]}


# --- annotated field types (used by the BentoML signatures and by the models below) ------------------

ConfigName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100,
        description="Config name (CONFIG_MAP) of a served model; GET-style listing: POST /models.",
        examples=[DEFAULT_CONFIG],
    ),
]
NumOutputs = Annotated[
    int, Field(ge=1, le=MAX_OUTPUTS, description=f"How many sequences (1-{MAX_OUTPUTS}).", examples=[1])
]
NumSteps = Annotated[
    int,
    Field(
        ge=2,
        le=MAX_OUTPUTS,
        description=f"Interpolation steps, both ends included (2-{MAX_OUTPUTS}); Magenta's --num_outputs.",
        examples=[5],
    ),
]
Temperature = Annotated[
    float,
    Field(
        gt=0.0,
        le=MAX_TEMPERATURE,
        description=f"Sampling temperature in (0, {MAX_TEMPERATURE}]; lower is more conservative.",
        examples=[EXAMPLE_TEMPERATURE],
    ),
]
Length = Annotated[
    int | None,
    Field(ge=1, le=4096, description="Decoded steps (default: the config's max_seq_len; capped at it).", examples=[None]),
]
Seed = Annotated[
    int | None,
    Field(ge=0, le=MAX_SEED, description="Seed: the same request with the same seed gives the same output.", examples=[None]),
]
Strength = Annotated[float, Field(ge=-10.0, le=10.0, description="Multiple of the attribute vector to add.", examples=[1.0])]
Format = Annotated[
    OutputFormat,
    Field(description="midi: one .mid (num_outputs=1); zip: a zip of .mid files; notes: JSON note lists."),
]


# --- note lists -----------------------------------------------------------------------------------------


class Note(BaseModel):
    """One note, as in a NoteSequence (times in seconds)."""

    pitch: int = Field(ge=0, le=127, examples=[60])
    velocity: int = Field(80, ge=1, le=127)
    start_time: float = Field(ge=0.0, le=MAX_DURATION_SECONDS, examples=[0.0])
    end_time: float = Field(gt=0.0, le=MAX_DURATION_SECONDS, examples=[0.25])
    instrument: int = Field(0, ge=0, le=255)
    program: int = Field(0, ge=0, le=127)
    is_drum: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Note:
        if self.end_time <= self.start_time:
            raise ValueError(f"end_time ({self.end_time}) must be after start_time ({self.start_time})")
        return self


class NoteList(BaseModel):
    """A short score: notes at a constant tempo in 4/4."""

    notes: list[Note] = Field(max_length=MAX_NOTES, description=f"At most {MAX_NOTES} notes.")
    qpm: float = Field(120.0, gt=1.0, le=1000.0, description="Tempo in quarter notes per minute.")


def _scale(pitches: list[int], qpm: float = 120.0) -> dict:
    step = 60.0 / qpm / 2  # eighth notes: 16 of them fill the 2 bars a 2-bar model reads
    return {
        "qpm": qpm,
        "notes": [{"pitch": p, "velocity": 80, "start_time": i * step, "end_time": (i + 1) * step} for i, p in enumerate(pitches)],
    }


EXAMPLE_NOTES_1 = _scale([60, 62, 64, 65, 67, 69, 71, 72, 72, 71, 69, 67, 65, 64, 62, 60])
EXAMPLE_NOTES_2 = _scale([67, 67, 69, 69, 71, 71, 72, 72, 74, 72, 71, 69, 67, 65, 64, 67])


# --- requests (the gRPC server validates its messages through these) ---------------------------------


class SampleRequest(BaseModel):
    config: ConfigName = DEFAULT_CONFIG
    num_outputs: NumOutputs = 1
    temperature: Temperature = EXAMPLE_TEMPERATURE
    length: Length = None
    seed: Seed = None
    format: Format = OutputFormat.midi


class InterpolateRequest(BaseModel):
    config: ConfigName = DEFAULT_CONFIG
    num_outputs: NumSteps = 5
    temperature: Temperature = EXAMPLE_TEMPERATURE
    length: Length = None
    seed: Seed = None
    format: Format = OutputFormat.zip


class DecodeRequest(BaseModel):
    config: ConfigName = DEFAULT_CONFIG
    z: list[list[float]] = Field(min_length=1, max_length=MAX_Z, description="Latent vectors, [n, z_size].")
    temperature: Temperature = EXAMPLE_TEMPERATURE
    length: Length = None
    seed: Seed = None
    format: Format = OutputFormat.notes

    @field_validator("z")
    @classmethod
    def _finite(cls, z: list[list[float]]) -> list[list[float]]:
        import math

        if any(not math.isfinite(v) for row in z for v in row):
            raise ValueError("z holds NaN or infinite values")
        return z


class GrooveOperation(str, Enum):
    humanize = "humanize"  # groovae_2bar_humanize
    tap_to_drums = "tap_to_drums"  # groovae_2bar_tap_fixed_velocity*
    add_closed_hh = "add_closed_hh"  # groovae_2bar_add_closed_hh
