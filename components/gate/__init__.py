"""The gate component (see component.py)."""
