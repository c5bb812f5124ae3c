"""The `appliance` command line (typer)."""
