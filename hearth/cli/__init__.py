"""The `hearth` command line (Typer + Rich)."""
