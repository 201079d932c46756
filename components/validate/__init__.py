"""The validate component (see component.py)."""
