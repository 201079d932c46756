"""The train component (see component.py)."""
