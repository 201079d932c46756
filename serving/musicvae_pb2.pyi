from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OutputFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MIDI: _ClassVar[OutputFormat]
    NOTES: _ClassVar[OutputFormat]
MIDI: OutputFormat
NOTES: OutputFormat

class Note(_message.Message):
    __slots__ = ("pitch", "velocity", "start_time", "end_time", "instrument", "program", "is_drum")
    PITCH_FIELD_NUMBER: _ClassVar[int]
    VELOCITY_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENT_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    IS_DRUM_FIELD_NUMBER: _ClassVar[int]
    pitch: int
    velocity: int
    start_time: float
    end_time: float
    instrument: int
    program: int
    is_drum: bool
    def __init__(self, pitch: _Optional[int] = ..., velocity: _Optional[int] = ..., start_time: _Optional[float] = ..., end_time: _Optional[float] = ..., instrument: _Optional[int] = ..., program: _Optional[int] = ..., is_drum: _Optional[bool] = ...) -> None: ...

class NoteList(_message.Message):
    __slots__ = ("notes", "qpm")
    NOTES_FIELD_NUMBER: _ClassVar[int]
    QPM_FIELD_NUMBER: _ClassVar[int]
    notes: _containers.RepeatedCompositeFieldContainer[Note]
    qpm: float
    def __init__(self, notes: _Optional[_Iterable[_Union[Note, _Mapping]]] = ..., qpm: _Optional[float] = ...) -> None: ...

class MidiInput(_message.Message):
    __slots__ = ("midi", "notes")
    MIDI_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    midi: bytes
    notes: NoteList
    def __init__(self, midi: _Optional[bytes] = ..., notes: _Optional[_Union[NoteList, _Mapping]] = ...) -> None: ...

class SampleRequest(_message.Message):
    __slots__ = ("config", "num_outputs", "temperature", "length", "seed", "format")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    NUM_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    config: str
    num_outputs: int
    temperature: float
    length: int
    seed: int
    format: OutputFormat
    def __init__(self, config: _Optional[str] = ..., num_outputs: _Optional[int] = ..., temperature: _Optional[float] = ..., length: _Optional[int] = ..., seed: _Optional[int] = ..., format: _Optional[_Union[OutputFormat, str]] = ...) -> None: ...

class InterpolateRequest(_message.Message):
    __slots__ = ("config", "input_midi_1", "input_midi_2", "num_outputs", "temperature", "length", "seed", "format")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    INPUT_MIDI_1_FIELD_NUMBER: _ClassVar[int]
    INPUT_MIDI_2_FIELD_NUMBER: _ClassVar[int]
    NUM_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    config: str
    input_midi_1: MidiInput
    input_midi_2: MidiInput
    num_outputs: int
    temperature: float
    length: int
    seed: int
    format: OutputFormat
    def __init__(self, config: _Optional[str] = ..., input_midi_1: _Optional[_Union[MidiInput, _Mapping]] = ..., input_midi_2: _Optional[_Union[MidiInput, _Mapping]] = ..., num_outputs: _Optional[int] = ..., temperature: _Optional[float] = ..., length: _Optional[int] = ..., seed: _Optional[int] = ..., format: _Optional[_Union[OutputFormat, str]] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("config", "inputs", "seed")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    config: str
    inputs: _containers.RepeatedCompositeFieldContainer[MidiInput]
    seed: int
    def __init__(self, config: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[MidiInput, _Mapping]]] = ..., seed: _Optional[int] = ...) -> None: ...

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class EncodeReply(_message.Message):
    __slots__ = ("config", "z", "mu", "sigma")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    MU_FIELD_NUMBER: _ClassVar[int]
    SIGMA_FIELD_NUMBER: _ClassVar[int]
    config: str
    z: _containers.RepeatedCompositeFieldContainer[Vector]
    mu: _containers.RepeatedCompositeFieldContainer[Vector]
    sigma: _containers.RepeatedCompositeFieldContainer[Vector]
    def __init__(self, config: _Optional[str] = ..., z: _Optional[_Iterable[_Union[Vector, _Mapping]]] = ..., mu: _Optional[_Iterable[_Union[Vector, _Mapping]]] = ..., sigma: _Optional[_Iterable[_Union[Vector, _Mapping]]] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("config", "z", "temperature", "length", "seed", "format")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    config: str
    z: _containers.RepeatedCompositeFieldContainer[Vector]
    temperature: float
    length: int
    seed: int
    format: OutputFormat
    def __init__(self, config: _Optional[str] = ..., z: _Optional[_Iterable[_Union[Vector, _Mapping]]] = ..., temperature: _Optional[float] = ..., length: _Optional[int] = ..., seed: _Optional[int] = ..., format: _Optional[_Union[OutputFormat, str]] = ...) -> None: ...

class AttributeRequest(_message.Message):
    __slots__ = ("config", "input_midi", "attribute", "strength", "temperature", "seed", "format")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    INPUT_MIDI_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    config: str
    input_midi: MidiInput
    attribute: str
    strength: float
    temperature: float
    seed: int
    format: OutputFormat
    def __init__(self, config: _Optional[str] = ..., input_midi: _Optional[_Union[MidiInput, _Mapping]] = ..., attribute: _Optional[str] = ..., strength: _Optional[float] = ..., temperature: _Optional[float] = ..., seed: _Optional[int] = ..., format: _Optional[_Union[OutputFormat, str]] = ...) -> None: ...

class GrooveRequest(_message.Message):
    __slots__ = ("config", "operation", "input_midi", "temperature", "seed", "format")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    INPUT_MIDI_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    config: str
    operation: str
    input_midi: MidiInput
    temperature: float
    seed: int
    format: OutputFormat
    def __init__(self, config: _Optional[str] = ..., operation: _Optional[str] = ..., input_midi: _Optional[_Union[MidiInput, _Mapping]] = ..., temperature: _Optional[float] = ..., seed: _Optional[int] = ..., format: _Optional[_Union[OutputFormat, str]] = ...) -> None: ...

class TransferGrooveRequest(_message.Message):
    __slots__ = ("config", "groove_midi", "score_midi", "temperature", "seed", "format")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    GROOVE_MIDI_FIELD_NUMBER: _ClassVar[int]
    SCORE_MIDI_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    config: str
    groove_midi: MidiInput
    score_midi: MidiInput
    temperature: float
    seed: int
    format: OutputFormat
    def __init__(self, config: _Optional[str] = ..., groove_midi: _Optional[_Union[MidiInput, _Mapping]] = ..., score_midi: _Optional[_Union[MidiInput, _Mapping]] = ..., temperature: _Optional[float] = ..., seed: _Optional[int] = ..., format: _Optional[_Union[OutputFormat, str]] = ...) -> None: ...

class Sequences(_message.Message):
    __slots__ = ("config", "midi", "notes")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    MIDI_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    config: str
    midi: _containers.RepeatedScalarFieldContainer[bytes]
    notes: _containers.RepeatedCompositeFieldContainer[NoteList]
    def __init__(self, config: _Optional[str] = ..., midi: _Optional[_Iterable[bytes]] = ..., notes: _Optional[_Iterable[_Union[NoteList, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("config", "source", "z_size", "max_seq_len", "operations", "attributes")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    Z_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    config: str
    source: str
    z_size: int
    max_seq_len: int
    operations: _containers.RepeatedScalarFieldContainer[str]
    attributes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, config: _Optional[str] = ..., source: _Optional[str] = ..., z_size: _Optional[int] = ..., max_seq_len: _Optional[int] = ..., operations: _Optional[_Iterable[str]] = ..., attributes: _Optional[_Iterable[str]] = ...) -> None: ...

class ListModelsReply(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...
