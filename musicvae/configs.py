"""Named presets, as Magenta's `configs.CONFIG_MAP`: one name = model hparams + data converter.

Names, hparams and converter arguments follow Magenta's `configs.py` (spec §1.2). Two extra names
come from Magenta's README: `groovae_2bar_hits_control` (the pre-TFDS name of
`groovae_2bar_hits_control_tfds`) and the released drum checkpoints' hparams as selectable
variants `cat-drums_2bar_small.lokl` / `.hikl` (spec §1.3). The chord-conditioned and
multi-instrument performance configs are not here yet.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from musicvae.data.converter import DataConverter
from musicvae.data.drums import FULL_DRUM_PITCH_CLASSES, REDUCED_DRUM_PITCH_CLASSES, DrumsConverter
from musicvae.data.groove import ROLAND_DRUM_PITCH_CLASSES, GrooveConverter
from musicvae.data.melody import OneHotMelodyConverter
from musicvae.data.trio import TrioConverter

if TYPE_CHECKING:
    import torch

MEL_PROGRAMS = range(0, 32)  # piano, chromatic percussion, organ, guitar


@dataclass(frozen=True)
class HParams:
    """Magenta's hparams (base_model + lstm_models defaults), same names and meanings."""

    max_seq_len: int = 32
    z_size: int = 32
    free_bits: float = 0.0  # in bits, over the whole latent (applied to each example's total KL)
    max_beta: float = 1.0
    beta_rate: float = 0.0  # beta = max_beta * (1 - beta_rate ** step)
    batch_size: int = 512
    grad_clip: float = 1.0
    clip_mode: str = "global_norm"
    grad_norm_clip_to_zero: float = 10000.0
    learning_rate: float = 0.001
    decay_rate: float = 0.9999
    min_learning_rate: float = 0.00001
    conditional: bool = True
    dec_rnn_size: tuple[int, ...] = (512,)
    enc_rnn_size: tuple[int, ...] = (256,)
    dropout_keep_prob: float = 1.0
    sampling_schedule: str = "constant"  # constant | exponential | inverse_sigmoid
    sampling_rate: float = 0.0
    use_cudnn: bool = False  # deprecated in Magenta too; kept so old --hparams strings parse
    residual_encoder: bool = False
    residual_decoder: bool = False
    control_preprocessing_rnn_size: tuple[int, ...] = (256,)

    def __post_init__(self) -> None:
        if self.sampling_schedule not in ("constant", "exponential", "inverse_sigmoid"):
            raise ValueError(f"unknown sampling_schedule {self.sampling_schedule!r}")
        if self.clip_mode not in ("global_norm", "value"):
            raise ValueError(f"unknown clip_mode {self.clip_mode!r}")
        if not 0.0 < self.dropout_keep_prob <= 1.0:
            raise ValueError(f"dropout_keep_prob must be in (0, 1], got {self.dropout_keep_prob}")
        for name in ("max_seq_len", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")

    def override(self, **values: Any) -> HParams:
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown hparam(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return dataclasses.replace(self, **fixed)

    def parse(self, text: str) -> HParams:
        """Apply a Magenta-style `--hparams` string: `k=v,k2=[1,2],k3=name`."""
        return self.override(**parse_hparams_string(text))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def parse_hparams_string(text: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    depth, current, parts = 0, "", []
    for ch in text.strip():
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += ch == "["
        depth -= ch == "]"
        current += ch
    if current:
        parts.append(current)
    for part in parts:
        key, sep, raw = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"malformed hparam {part!r}; expected name=value")
        raw = raw.strip()
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = {"true": True, "false": False}.get(raw.lower(), raw)
        values[key.strip()] = value
    return values


@dataclass(frozen=True)
class ModelSpec:
    """Which encoder and decoder a config uses, with their structural arguments."""

    encoder: str = "bidirectional"  # bidirectional | hierarchical
    decoder: str = "categorical"  # categorical | multi_out_categorical | hierarchical | nade | groove
    level_lengths: tuple[int, ...] = ()  # hierarchical encoder/decoder segment lengths
    core_decoder: str = "categorical"  # for the hierarchical decoder: categorical | split_multi_out
    output_depths: tuple[int, ...] = ()  # trio: per-stream one-hot depths
    nade_num_hidden: int = 0


@dataclass
class Config:
    name: str
    model: ModelSpec
    hparams: HParams
    converter_factory: Callable[..., DataConverter] = field(repr=False)
    transpose_range: tuple[int, int] | None = None  # training-time augmentation (melodies only)
    # GrooVAE's drum pitch map by name (DRUM_MAPS): 'roland' (Magenta's, the default) or 'gm'. None for
    # every other config; `with_drum_map` picks one, and checkpoints and index.json record it.
    drum_map: str | None = None
    data_converter: DataConverter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_converter = self.converter_factory()
        self.drum_map = resolve_drum_map(self.name, self.drum_map, isinstance(self.data_converter, GrooveConverter))
        if self.drum_map is not None and DRUM_MAPS[self.drum_map]:
            self.data_converter = self.new_converter()

    def new_converter(self, **overrides: Any) -> DataConverter:
        """A converter of its own (modes and random state are per instance), with the config's drum map.

        `overrides` replace converter arguments, e.g. `**GM_DRUM_MAP` for GrooVAE on General MIDI data.
        """
        return self.converter_factory(**{**converter_overrides(self.drum_map), **overrides})

    def with_drum_map(self, drum_map: str | None) -> Config:
        """This config with GrooVAE drum map `drum_map` ('roland' or 'gm'); None keeps the current one.

        Raises ValueError for an unknown name, or for a config that is not GrooVAE.
        """
        return self if drum_map is None or drum_map == self.drum_map else dataclasses.replace(self, drum_map=drum_map)

    def build_model(self) -> torch.nn.Module:
        """The `musicvae.nn.vae.MusicVAE` for this config (torch is imported only here)."""
        from musicvae.nn.vae import MusicVAE

        return MusicVAE.from_config(self)

    def with_hparams(self, text_or_values: str | dict[str, Any]) -> Config:
        new = copy.copy(self)
        new.hparams = (
            self.hparams.parse(text_or_values) if isinstance(text_or_values, str) else self.hparams.override(**text_or_values)
        )
        return new


@dataclass(frozen=True)
class ConverterFactory:
    """A converter class with Magenta's arguments that callers may override one by one.

    A value, not a closure, so two configs can be compared for "same tensors" (e.g. shards converted
    for one config feeding another).
    """

    cls: type[DataConverter]
    arguments: dict[str, Any]

    def __call__(self, **overrides: Any) -> DataConverter:
        return self.cls(**{**self.arguments, **overrides})


def _factory(cls: type[DataConverter], **arguments: Any) -> ConverterFactory:
    return ConverterFactory(cls, arguments)


_melody_2bar = _factory(OneHotMelodyConverter, valid_programs=MEL_PROGRAMS, skip_polyphony=False, max_bars=100, slice_bars=2, steps_per_quarter=4)
_melody_16bar = _factory(OneHotMelodyConverter, skip_polyphony=False, max_bars=100, slice_bars=16, steps_per_quarter=4)
_trio = _factory(TrioConverter, steps_per_quarter=4, slice_bars=16, gap_bars=2)


def _drums(**kwargs: Any) -> ConverterFactory:
    return _factory(DrumsConverter, max_bars=100, slice_bars=2, steps_per_quarter=4, roll_input=True, **kwargs)


def _groove(**kwargs: Any) -> ConverterFactory:
    return _factory(
        GrooveConverter,
        steps_per_quarter=4,
        quarters_per_bar=4,
        max_tensors_per_notesequence=20,
        pitch_classes=ROLAND_DRUM_PITCH_CLASSES,
        inference_pitch_classes=REDUCED_DRUM_PITCH_CLASSES,
        **kwargs,
    )


# GrooVAE on General MIDI material (our corpus): the 9-class GM map in every mode, and drum pitches
# outside it dropped instead of refused. Magenta's Roland TD-11 map stays the default for GMD data.
GM_DRUM_MAP: dict[str, Any] = dict(
    pitch_classes=REDUCED_DRUM_PITCH_CLASSES, inference_pitch_classes=REDUCED_DRUM_PITCH_CLASSES, drop_unmapped_pitches=True
)

# `--drum_map` of `musicvae convert` and `music_vae_train` (GrooVAE configs only): converter overrides
# by name. 'roland' is Magenta's setting, for Groove MIDI Dataset-layout data (other pitches are refused);
# 'gm' is GM_DRUM_MAP, for General MIDI data such as our corpus.
DRUM_MAPS: dict[str, dict[str, Any]] = {"roland": {}, "gm": GM_DRUM_MAP}
DEFAULT_DRUM_MAP = "roland"
DRUM_MAP_HELP = (
    "GrooVAE configs only: drum pitch map of the converter. roland (default, as Magenta): the Roland TD-11 "
    "map of the Groove MIDI Dataset, other drum pitches make the file fail; gm: the 9-class General MIDI map "
    "(configs.GM_DRUM_MAP) in every mode, unmapped drum pitches dropped, for General MIDI data such as our "
    "corpus. Recorded in index.json and in checkpoints; eval and generation reuse the checkpoint's"
)


def resolve_drum_map(config_name: str, drum_map: str | None, is_groove: bool | None = None) -> str | None:
    """The drum map a config's converter uses: `drum_map`, or 'roland' for GrooVAE configs; None otherwise.

    `is_groove` defaults to whether CONFIG_MAP[config_name] is a GrooVAE config.
    """
    if is_groove is None:
        is_groove = isinstance(get_config(config_name).data_converter, GrooveConverter)
    if drum_map is not None and drum_map not in DRUM_MAPS:
        raise ValueError(f"unknown drum map {drum_map!r}; expected one of {', '.join(DRUM_MAPS)}")
    if not is_groove:
        if drum_map is not None:
            raise ValueError(
                f"--drum_map applies to GrooVAE configs only, not {config_name} (the drum VAEs always use General MIDI maps)"
            )
        return None
    return drum_map or DEFAULT_DRUM_MAP


def converter_overrides(drum_map: str | None) -> dict[str, Any]:
    """Converter arguments for a resolved drum map (see `resolve_drum_map`); {} for None and 'roland'."""
    return dict(DRUM_MAPS[drum_map]) if drum_map is not None else {}


def add_drum_map_argument(parser: Any) -> None:
    """`--drum_map`, shared by `musicvae convert` and `music_vae_train`."""
    parser.add_argument("--drum_map", choices=tuple(DRUM_MAPS), default=None, help=DRUM_MAP_HELP)


_SS = dict(sampling_schedule="inverse_sigmoid", sampling_rate=1000.0)
_CAT_MEL_SMALL = HParams(batch_size=512, max_seq_len=32, z_size=256, enc_rnn_size=(512,), dec_rnn_size=(256, 256),
                         free_bits=0, max_beta=0.2, beta_rate=0.99999, **_SS)
_CAT_DRUMS_SMALL = HParams(batch_size=512, max_seq_len=32, z_size=256, enc_rnn_size=(512,), dec_rnn_size=(256, 256),
                           free_bits=48, max_beta=0.2, **_SS)
_NADE = HParams(batch_size=512, max_seq_len=32, z_size=256, enc_rnn_size=(1024,), dec_rnn_size=(512, 512),
                free_bits=48, max_beta=0.2, **_SS)
_GROOVE = HParams(batch_size=512, max_seq_len=32, z_size=256, enc_rnn_size=(512,), dec_rnn_size=(256, 256),
                  max_beta=0.2, free_bits=48, dropout_keep_prob=0.3)
_HIER = ModelSpec(decoder="hierarchical", level_lengths=(16, 16))
_HIER_ENC = dict(encoder="hierarchical", decoder="hierarchical", level_lengths=(16, 16))
_TRIO_DEPTHS = (90, 90, 512)
_MEL16 = dict(batch_size=512, max_seq_len=256, z_size=512, free_bits=256, max_beta=0.2)
_TRIO16 = dict(batch_size=256, max_seq_len=256, z_size=512)
# Our release presets, not Magenta's: the hierarchical 16-bar models at cat-mel_2bar_small's sizes, so that
# trained half-precision weights fit in the repository (5.48 M / 11.34 M parameters: 10.4 / 21.6 MB), like
# Magenta.js's small 16-bar checkpoints; objective and schedules are the full-size configs'.
_SMALL16 = dict(z_size=256, enc_rnn_size=(512,), dec_rnn_size=(256, 256))
_HIER_TRIO = ModelSpec(decoder="hierarchical", level_lengths=(16, 16), core_decoder="split_multi_out",
                       output_depths=_TRIO_DEPTHS)

_CONFIGS = [
    # --- melodies ------------------------------------------------------------------------
    Config("cat-mel_2bar_small", ModelSpec(), _CAT_MEL_SMALL, _melody_2bar, transpose_range=(-5, 5)),
    Config("cat-mel_2bar_big", ModelSpec(),
           _CAT_MEL_SMALL.override(z_size=512, enc_rnn_size=(2048,), dec_rnn_size=(2048, 2048, 2048), max_beta=0.5),
           _melody_2bar, transpose_range=(-5, 5)),
    Config("flat-mel_16bar", ModelSpec(),
           HParams(enc_rnn_size=(2048, 2048), dec_rnn_size=(2048, 2048, 2048), **_MEL16), _melody_16bar),
    Config("hierdec-mel_16bar", _HIER,
           HParams(enc_rnn_size=(2048, 2048), dec_rnn_size=(1024, 1024), **_MEL16), _melody_16bar),
    Config("hier-mel_16bar", ModelSpec(**_HIER_ENC),
           HParams(enc_rnn_size=(1024,), dec_rnn_size=(1024, 1024), **_MEL16), _melody_16bar),
    Config("hierdec-mel_16bar_small", _HIER, HParams(**{**_MEL16, **_SMALL16}), _melody_16bar),
    # --- drums ---------------------------------------------------------------------------
    Config("cat-drums_2bar_small", ModelSpec(), _CAT_DRUMS_SMALL, _drums()),
    Config("cat-drums_2bar_small.lokl", ModelSpec(), _CAT_DRUMS_SMALL.override(free_bits=0, max_beta=0.8), _drums()),
    Config("cat-drums_2bar_small.hikl", ModelSpec(), _CAT_DRUMS_SMALL.override(free_bits=96, max_beta=0.2), _drums()),
    Config("cat-drums_2bar_big", ModelSpec(),
           _CAT_DRUMS_SMALL.override(z_size=512, enc_rnn_size=(2048,), dec_rnn_size=(2048, 2048, 2048)), _drums()),
    Config("nade-drums_2bar_reduced", ModelSpec(decoder="nade", nade_num_hidden=128), _NADE, _drums(roll_output=True)),
    Config("nade-drums_2bar_full", ModelSpec(decoder="nade", nade_num_hidden=128), _NADE,
           _drums(roll_output=True, pitch_classes=FULL_DRUM_PITCH_CLASSES)),
    # --- trios ---------------------------------------------------------------------------
    Config("flat-trio_16bar", ModelSpec(decoder="multi_out_categorical", output_depths=_TRIO_DEPTHS),
           HParams(enc_rnn_size=(2048, 2048), dec_rnn_size=(2048, 2048, 2048), **_TRIO16), _trio),
    Config("hierdec-trio_16bar", _HIER_TRIO,
           HParams(enc_rnn_size=(2048, 2048), dec_rnn_size=(1024, 1024), free_bits=256, max_beta=0.2, **_TRIO16), _trio),
    Config("hierdec-trio_16bar_small", _HIER_TRIO,
           HParams(free_bits=256, max_beta=0.2, **{**_TRIO16, **_SMALL16}), _trio),
    Config("hier-trio_16bar",
           ModelSpec(core_decoder="split_multi_out", output_depths=_TRIO_DEPTHS, **_HIER_ENC),
           HParams(enc_rnn_size=(1024,), dec_rnn_size=(1024, 1024), free_bits=256, max_beta=0.2, **_TRIO16), _trio),
    # --- GrooVAE -------------------------------------------------------------------------
    Config("groovae_4bar", ModelSpec(decoder="groove"), _GROOVE.override(max_seq_len=64), _groove(split_bars=4)),
    Config("groovae_2bar_humanize", ModelSpec(decoder="groove"), _GROOVE, _groove(split_bars=2, humanize=True)),
    Config("groovae_2bar_tap_fixed_velocity", ModelSpec(decoder="groove"), _GROOVE,
           _groove(split_bars=2, tapify=True, fixed_velocities=True)),
    Config("groovae_2bar_tap_fixed_velocity_note_dropout", ModelSpec(decoder="groove"), _GROOVE,
           _groove(split_bars=2, tapify=True, fixed_velocities=True, max_note_dropout_probability=0.8)),
    Config("groovae_2bar_add_closed_hh", ModelSpec(decoder="groove"), _GROOVE, _groove(split_bars=2, add_instruments=[2])),
    Config("groovae_2bar_hits_control_tfds", ModelSpec(decoder="groove"), _GROOVE,
           _groove(split_bars=2, hits_as_controls=True)),
]

CONFIG_MAP: dict[str, Config] = {c.name: c for c in _CONFIGS}
# Magenta's README still uses the pre-TFDS name; it is the same model and converter.
CONFIG_MAP["groovae_2bar_hits_control"] = dataclasses.replace(CONFIG_MAP["groovae_2bar_hits_control_tfds"], name="groovae_2bar_hits_control")


def get_config(name: str) -> Config:
    """CONFIG_MAP[name] with a clear error listing the known names."""
    try:
        return CONFIG_MAP[name]
    except KeyError:
        raise KeyError(f"unknown config {name!r}; known configs: {', '.join(sorted(CONFIG_MAP))}") from None
