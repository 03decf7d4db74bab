"""The `bloodcell` command line (``main.cli``) and the embedded local stack it runs (``stack``)."""
