"""``python -m mogu`` (also ``accelerate launch -m mogu train ...``)."""

from mogu.cli import app

app(prog_name="mogu")
