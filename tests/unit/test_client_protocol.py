"""The in-process and the HTTP client offer one interface, ``clients.protocol.LabClient``.

mypy checks this file ([tool.mypy] files): the assignment in ``lab_clients`` fails
tests/unit/test_lint.py::test_mypy_finds_no_type_error as soon as either client's methods drift from the Protocol.
"""

from __future__ import annotations

import inspect

from bloodcell_core.clients.http import HttpClient
from bloodcell_core.clients.local import Client
from bloodcell_core.clients.protocol import LabClient


def lab_clients() -> list[type[LabClient]]:
    clients: list[type[LabClient]] = [Client, HttpClient]  # mypy: each satisfies LabClient
    return clients


def test_both_clients_offer_every_method_of_the_protocol_with_its_parameters():
    methods = {name: inspect.signature(f) for name, f in vars(LabClient).items() if inspect.isfunction(f) and not name.startswith("_")}
    assert {"submit", "report", "wait", "relabel", "sign_off", "models"} <= set(methods)
    for client in lab_clients():
        for name, wanted in methods.items():
            offered = inspect.signature(getattr(client, name)).parameters
            assert set(wanted.parameters) - {"actor"} <= set(offered), f"{client.__name__}.{name}"
