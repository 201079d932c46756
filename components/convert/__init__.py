"""The convert component (see component.py)."""
