"""Input and output helpers shared by every layer: atomic writes, JSON Lines with file:line errors,
and the provenance saved next to every output."""
