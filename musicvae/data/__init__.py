"""MIDI <-> tensor conversion: note sequences, quantisation, and one converter per model family."""
