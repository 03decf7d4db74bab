"""The HTTP API for laboratory systems: a thin FastAPI adapter over bloodcell_core services."""
