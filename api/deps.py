"""What API routes depend on, declared once: the caller with the scope a route needs (``auth.require``), and
from ``bloodcell_core.edge`` the app's settings and local client (``SettingsDep``, ``ClientDep``).

A route names its caller's scope in its signature: ``def route(..., caller: Reviewer)``. Routes reach the
database only through the local client; none imports the ORM (a test reads the imports)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from api.auth import Caller, authenticated, require
from bloodcell_core.service.states import Scope

AnyCaller = Annotated[Caller, Depends(authenticated)]  # any active token: the documentation
Submitter = Annotated[Caller, Depends(require(Scope.SUBMIT))]
Reader = Annotated[Caller, Depends(require(Scope.READ))]
Reviewer = Annotated[Caller, Depends(require(Scope.REVIEW))]
Admin = Annotated[Caller, Depends(require(Scope.ADMIN))]
MetricsReader = Annotated[Caller, Depends(require(Scope.METRICS))]
