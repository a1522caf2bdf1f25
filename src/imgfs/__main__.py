"""`python -m imgfs` runs the command line."""

from .cli import run

run()
