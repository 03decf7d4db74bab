"""The import rules of the architecture, read from the source (AST), and the import weight of producers.

Rooms: bloodcell_core's top level is the plugin API and the settings; ``ml`` trains and serves models;
``service`` owns the database and the laboratory workflow; ``clients`` are the producers' Python
clients; ``cli`` is the command line. ``api``, ``web`` (the review console) and ``workers`` are thin
adapters; ``plugins`` are the built-in plugins.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PROJECT

PACKAGES = tuple(sorted(path.parent.name for path in PROJECT.glob("*/__init__.py")))  # the top-level packages, a new one too
TOP_LEVEL = {"bloodcell_core", "bloodcell_core.config", "bloodcell_core.hookspecs", "bloodcell_core.loinc",
             "bloodcell_core.plugin_manager", "bloodcell_core.plugin_types"}  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for package in PACKAGES for p in sorted((PROJECT / package).rglob("*.py"))}


def imports_of(module: str) -> set[str]:
    """The project modules MODULE imports, anywhere in it (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from package import module` imports the module; `from module import name` the module
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def in_room(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


def offending(room: str, allowed) -> list[str]:
    return sorted(f"{m} imports {i}" for m in GRAPH if in_room(m, room) for i in GRAPH[m] if not allowed(i))


def test_the_module_list_is_read():
    assert {"bloodcell_core.ml.training", "bloodcell_core.service.samples", "bloodcell_core.clients.http",
            "bloodcell_core.cli.main", "api.app", "workers.tasks", "plugins.compact_cnn"} <= set(MODULES)  # fmt: skip
    assert "bloodcell_core.ml.serving" in GRAPH["bloodcell_core.service.versions"]


def test_top_level_is_the_plugin_api_and_imports_no_room():
    assert sorted(f"{m} imports {i}" for m in TOP_LEVEL for i in GRAPH[m] - TOP_LEVEL) == []


def test_ml_never_imports_the_service_the_clients_or_the_adapters():
    assert offending("bloodcell_core.ml", lambda i: i in TOP_LEVEL or in_room(i, "bloodcell_core.ml") or in_room(i, "plugins")) == []


def test_service_uses_only_the_ml_serving_api():
    def allowed(i: str) -> bool:
        # ml's two public faces: the serving API, and the sample-level rule and statistics (flags, differential)
        public_ml = ("bloodcell_core.ml.serving", "bloodcell_core.ml.differential")
        return i in TOP_LEVEL or in_room(i, "bloodcell_core.service") or i in public_ml

    assert offending("bloodcell_core.service", allowed) == []


def test_clients_never_import_the_database_models_or_ml():
    def allowed(i: str) -> bool:
        return (
            i in TOP_LEVEL
            or in_room(i, "bloodcell_core.clients")
            or (in_room(i, "bloodcell_core.service") and i != "bloodcell_core.service.tables")
        )

    assert offending("bloodcell_core.clients", allowed) == []
    # the HTTP client runs on other machines: only the light contracts of the service
    assert GRAPH["bloodcell_core.clients.http"] <= {"bloodcell_core.clients.waiting", "bloodcell_core.service.receipts",
                                                     "bloodcell_core.service.results", "bloodcell_core.service.states"}  # fmt: skip


def test_adapters_and_plugins_stay_in_their_rooms():
    assert offending("api", lambda i: not in_room(i, "workers") and not in_room(i, "bloodcell_core.cli")) == []
    web_forbidden = ("api", "workers", "bloodcell_core.cli", "bloodcell_core.ml", "plugins")
    assert offending("web", lambda i: not any(in_room(i, room) for room in web_forbidden)) == []
    assert offending("workers", lambda i: not in_room(i, "api") and not in_room(i, "bloodcell_core.cli")) == []
    plugin_rooms = ("bloodcell_core.service", "bloodcell_core.clients", "bloodcell_core.cli", "api", "web", "workers")
    assert offending("plugins", lambda i: not any(in_room(i, room) for room in plugin_rooms)) == []


ORM = ("bloodcell_core.service.tables", "bloodcell_core.service.db")
EDGE = "bloodcell_core.edge"
# what an API route may take from the service besides the local client: contracts, the id check, the metrics registry
ROUTE_SERVICE = {"bloodcell_core.service.states", "bloodcell_core.service.receipts", "bloodcell_core.service.results",
                 "bloodcell_core.service.errors", "bloodcell_core.service.submission",
                 "bloodcell_core.service.ops_metrics"}  # fmt: skip


def third_party_imports(module: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found - set(PACKAGES)


def test_routes_and_pages_never_touch_the_orm():
    """API routes and console pages reach the database through the client and the service, never a session or a table."""
    assert offending("api.routes", lambda i: i not in ORM) == []
    assert offending("web", lambda i: i not in ORM) == []
    assert offending("api.routes", lambda i: not in_room(i, "bloodcell_core.service") or i in ROUTE_SERVICE) == []
    edge_modules = [m for m in MODULES if in_room(m, "api.routes") or in_room(m, "web")]
    assert sorted(m for m in edge_modules if "sqlalchemy" in third_party_imports(m)) == []


def test_the_edge_helpers_sit_below_both_adapters():
    """bloodcell_core.edge (uploads, names, sha256 parameters, the error handler) imports neither adapter."""
    forbidden = ("api", "web", "workers", "bloodcell_core.cli", "bloodcell_core.ml", "plugins", *ORM)
    assert sorted(i for i in GRAPH[EDGE] if any(in_room(i, room) for room in forbidden)) == []
    assert EDGE in GRAPH["api.routes.samples"] and EDGE in GRAPH["web.submit"]  # both read uploads through it


def edge_work_outside_the_edge(module: str) -> list[str]:
    """What only bloodcell_core.edge may do, done in MODULE: read a request's form or an upload, answer errors by
    installing a handler or catching service errors, spell the sha256 rule."""
    found = []
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            login_redirect = name == "add_exception_handler" and ast.unparse(node.args[0]) == "LoginRequired"
            if name in ("form", "read", "exception_handler", "add_exception_handler") and not login_redirect:
                found.append(f"{module}:{node.lineno} .{name}()")
        elif isinstance(node, ast.Name) and node.id in ("SERVICE_ERRORS", "ERROR_STATUS", "status_of", "upload_name"):
            found.append(f"{module}:{node.lineno} {node.id}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and ("0-9a-f" in node.value or "abcdef" in node.value):
            found.append(f"{module}:{node.lineno} a sha256 rule")
    return found


def test_routes_and_pages_share_the_edge_helpers():
    adapters = [m for m in MODULES if in_room(m, "api") or in_room(m, "web")]
    assert [found for m in adapters for found in edge_work_outside_the_edge(m)] == []


def test_every_function_of_the_http_edge_is_shorter_than_60_lines():
    lengths = {
        f"{module}.{node.name}": node.end_lineno - node.lineno + 1
        for module in MODULES
        if in_room(module, "api") or in_room(module, "web") or module == EDGE
        for node in ast.walk(ast.parse(MODULES[module].read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }
    assert {name: n for name, n in lengths.items() if n >= 60} == {}


def test_no_import_cycle():
    """Depth-first search for a back edge over every import, function-level ones included."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    cycles = [cycle for module in sorted(GRAPH) if module not in state and (cycle := visit(module))]
    assert cycles == [], " -> ".join(cycles[0])


def modules_loaded_by(code: str, env: dict[str, str] | None = None) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, cwd=PROJECT, env={**os.environ, **(env or {})}, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return {name.split(".")[0] for name in json.loads(result.stdout.splitlines()[-1])}


HEAVY = {"keras", "tensorflow", "jax", "torch"}


def test_the_http_client_imports_neither_keras_nor_the_database():
    loaded = modules_loaded_by("import bloodcell_core.clients.http")
    assert loaded & (HEAVY | {"sqlalchemy", "cv2", "celery"}) == set()


@pytest.mark.parametrize("via", ["http", "local"])
def test_the_cli_submit_path_never_imports_keras(tmp_path, via):
    """`bloodcell submit` as a user runs it, up to the point where it reaches the API or the database."""
    image = tmp_path / "cell.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    env = {"BLOODCELL_DATABASE_URL": f"sqlite:///{tmp_path}/empty.db", "BLOODCELL_DATA_DIR": str(tmp_path)}
    if via == "http":  # a port nothing listens on: the submission fails after the whole client path has loaded
        env |= {"BLOODCELL_API_URL": "http://127.0.0.1:9", "BLOODCELL_API_TOKEN": "x"}
    code = (
        "from bloodcell_core.cli.main import cli\n"
        f"try:\n    cli(['submit', '--sample-id', 'S-1', {str(image)!r}], standalone_mode=False)\n"
        "except BaseException:\n    pass\n"
    )
    loaded = modules_loaded_by(code, env)
    assert "bloodcell_core" in loaded and loaded & HEAVY == set()


def test_every_third_party_import_is_a_declared_dependency():
    """Imported by the project's code (tests aside) means named in pyproject.toml's dependencies."""
    import importlib.metadata
    import re
    import tomllib

    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[\[<>=!;~ ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in project["dependencies"]}
    distributions = importlib.metadata.packages_distributions()
    first_party = set(PACKAGES)
    undeclared = set()
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names} - first_party - set(sys.stdlib_module_names):
                if not {d.lower().replace("_", "-") for d in distributions.get(top, [top])} & declared:
                    undeclared.add(f"{top} ({path.relative_to(PROJECT)})")
    assert sorted(undeclared) == []


def test_tests_share_helpers_through_modules_not_through_each_other():
    """Test modules import helpers.py and servers.py, never conftest.py or another test module."""
    offenders = []
    for path in sorted((PROJECT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{path.relative_to(PROJECT)}: {name}" for name in names if name.startswith(("test_", "conftest"))]
    assert offenders == []


def test_the_image_holds_every_package_the_entry_points_import():
    """The Dockerfile copies every top-level package the image's commands reach by imports: the console script,
    the plugin entry points and compose's `celery -A` apps (it once left out web/, and the API could not start);
    and pyproject.toml installs each of them."""
    import fnmatch
    import tomllib

    import yaml

    pyproject = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    project = pyproject["project"]
    targets = [*project["scripts"].values(), *(t for group in project["entry-points"].values() for t in group.values())]
    commands = [s.get("command") for s in yaml.safe_load((PROJECT / "docker-compose.yml").read_text())["services"].values()]
    targets += [c[c.index("-A") + 1] for c in commands if isinstance(c, list) and c[0] == "celery"]
    reached: set[str] = set()
    todo = [target.split(":")[0] for target in targets]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo += GRAPH[module]
            # and the modules it starts by name in another process ("api.app:create_app" for uvicorn, "workers.app")
            strings = [node.value for node in ast.walk(ast.parse(MODULES[module].read_text())) if isinstance(node, ast.Constant)]
            todo += [name for value in strings if isinstance(value, str) and (name := value.split(":")[0]) in MODULES and "." in name]
    packages = {module.split(".")[0] for module in reached}
    assert {"bloodcell_core", "plugins", "workers", "api", "web"} <= packages  # the walk reaches the lazy imports
    copied = set()
    for line in (PROJECT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            sources = [word for word in line.split()[1:-1] if not word.startswith("--")]
            copied |= {source.split("/")[0] for source in sources}
    read_from_disk = {"migrations", "models"}  # Alembic's scripts (service/db.py), the default model (compose's env)
    assert sorted((packages | read_from_disk) - copied) == []
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(p for p in packages if not any(fnmatch.fnmatch(p, pattern) for pattern in include)) == []
