"""CONFIG_MAP: Magenta's names, hparams and converters."""

from __future__ import annotations

import pytest

from musicvae.configs import CONFIG_MAP, HParams, get_config, parse_hparams_string

MAGENTA_NAMES = {
    "cat-mel_2bar_small", "cat-mel_2bar_big", "flat-mel_16bar", "hierdec-mel_16bar", "hier-mel_16bar",
    "cat-drums_2bar_small", "cat-drums_2bar_big", "nade-drums_2bar_reduced", "nade-drums_2bar_full",
    "flat-trio_16bar", "hierdec-trio_16bar", "hier-trio_16bar",
    "groovae_4bar", "groovae_2bar_humanize", "groovae_2bar_tap_fixed_velocity",
    "groovae_2bar_tap_fixed_velocity_note_dropout", "groovae_2bar_add_closed_hh", "groovae_2bar_hits_control_tfds",
}
README_NAMES = {"groovae_2bar_hits_control", "cat-drums_2bar_small.lokl", "cat-drums_2bar_small.hikl"}
RELEASE_PRESETS = {"hierdec-mel_16bar_small", "hierdec-trio_16bar_small"}  # ours: weights that fit in the repo

# (input depth, output depth, control depth) per spec §2
DEPTHS = {
    "cat-mel_2bar_small": (90, 90, 0),
    "hierdec-mel_16bar": (90, 90, 0),
    "cat-drums_2bar_small": (10, 512, 0),
    "nade-drums_2bar_reduced": (10, 9, 0),
    "nade-drums_2bar_full": (62, 61, 0),
    "hierdec-trio_16bar": (692, 692, 0),
    "groovae_4bar": (27, 27, 0),
    "groovae_2bar_hits_control_tfds": (27, 27, 9),
}


def test_every_config_is_listed():
    assert set(CONFIG_MAP) == MAGENTA_NAMES | README_NAMES | RELEASE_PRESETS


@pytest.mark.parametrize("name, depths", sorted(DEPTHS.items()))
def test_converter_depths(name, depths):
    conv = CONFIG_MAP[name].data_converter
    assert (conv.input_depth, conv.output_depth, conv.control_depth) == depths


def test_hparams_follow_magenta():
    small = CONFIG_MAP["cat-mel_2bar_small"].hparams
    assert (small.z_size, small.enc_rnn_size, small.dec_rnn_size) == (256, (512,), (256, 256))
    assert (small.max_beta, small.beta_rate, small.sampling_schedule, small.sampling_rate) == (0.2, 0.99999, "inverse_sigmoid", 1000)
    hier = CONFIG_MAP["hierdec-trio_16bar"].hparams
    assert (hier.batch_size, hier.max_seq_len, hier.free_bits, hier.enc_rnn_size) == (256, 256, 256, (2048, 2048))
    assert CONFIG_MAP["groovae_4bar"].hparams.max_seq_len == 64
    assert CONFIG_MAP["groovae_2bar_humanize"].hparams.dropout_keep_prob == 0.3
    assert CONFIG_MAP["cat-drums_2bar_small.lokl"].hparams.free_bits == 0
    assert CONFIG_MAP["cat-drums_2bar_small.lokl"].hparams.max_beta == 0.8
    assert CONFIG_MAP["cat-drums_2bar_small.hikl"].hparams.free_bits == 96


def test_hparams_string_parses_like_magenta():
    assert parse_hparams_string("batch_size=64,dec_rnn_size=[128, 128],sampling_schedule=constant,use_cudnn=false") == {
        "batch_size": 64, "dec_rnn_size": [128, 128], "sampling_schedule": "constant", "use_cudnn": False,
    }
    hp = HParams().parse("z_size=16,enc_rnn_size=[32,32]")
    assert hp.z_size == 16 and hp.enc_rnn_size == (32, 32)


@pytest.mark.parametrize("bad, message", [
    ("nonsense=1", "unknown hparam"), ("z_size", "malformed"), ("sampling_schedule=sometimes", "unknown sampling_schedule"),
    ("dropout_keep_prob=0", "dropout_keep_prob"),
])
def test_bad_hparams_are_rejected_clearly(bad, message):
    with pytest.raises(ValueError, match=message):
        HParams().parse(bad)


def test_unknown_config_names_the_known_ones():
    with pytest.raises(KeyError, match="unknown config 'cat-mel_2bar_tiny'.*cat-mel_2bar_small"):
        get_config("cat-mel_2bar_tiny")


def test_alias_and_new_converters_are_independent():
    alias = CONFIG_MAP["groovae_2bar_hits_control"]
    assert alias.hparams == CONFIG_MAP["groovae_2bar_hits_control_tfds"].hparams
    a, b = alias.new_converter(), alias.new_converter()
    a.set_mode("infer")
    assert b.mode is None


def test_gm_drum_map_override_for_groovae_on_general_midi():
    import pretty_midi

    from musicvae.configs import GM_DRUM_MAP

    pm = pretty_midi.PrettyMIDI()
    kit = pretty_midi.Instrument(program=0, is_drum=True)
    # 35 (GM acoustic kick) and 39 (hand clap) are not on the Roland map
    kit.notes += [pretty_midi.Note(100, [35, 42, 39, 42][i % 4], i * 0.125, i * 0.125 + 0.1) for i in range(64)]
    pm.instruments.append(kit)
    cfg = CONFIG_MAP["groovae_2bar_humanize"]
    roland = cfg.new_converter()
    roland.set_mode("eval")
    with pytest.raises(KeyError, match="35"):
        roland.to_tensors(pm)
    gm = cfg.new_converter(**GM_DRUM_MAP)
    gm.set_mode("eval")
    t = gm.to_tensors(pm)
    assert len(t.outputs) == 2
    hits = t.outputs[0][:, :9]
    assert hits[0, 0] == 1 and hits[1, 2] == 1 and hits[2, 1] == 1  # kick, closed hat, clap -> snare
