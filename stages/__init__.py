"""Typer commands, one per DVC stage. Thin: parse params, call pipeline/, write artifacts."""
