"""The package component (see component.py)."""
