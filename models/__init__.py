"""Pydantic types shared by every layer. No I/O, no environment reads."""
