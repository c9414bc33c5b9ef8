"""The commands of `rtml`, one module per group; rtml/app/cli.py gathers them."""
