"""The one plugin manager: entry-point discovery, validation and lookup of what plugins provide.

Built-in plugins (``plugins/``) are declared in bloodcell's own ``pyproject.toml`` under the
``bloodcell`` entry-point group, exactly like a third-party package would declare its own.
"""

from __future__ import annotations

import functools
import importlib.metadata
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from bloodcell_core import hookspecs
from bloodcell_core.plugin_types import CellLocator, Exporter, ModelSpec, PreprocessingStep, Runtime

ENTRY_POINT_GROUP = "bloodcell"

# Where each registered plugin came from, for `bloodcell plugins`.
_plugin_sources: dict[str, str] = {}


class PluginError(RuntimeError):
    """A plugin failed to load, registered something invalid, or was asked for but not found."""


class UnknownPlugin(PluginError):
    """No installed plugin provides the model, step or exporter asked for."""


@dataclass
class PluginInfo:
    name: str
    source: str
    hooks: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    preprocessing_steps: list[str] = field(default_factory=list)
    cell_locators: list[str] = field(default_factory=list)
    exporters: list[str] = field(default_factory=list)
    runtimes: list[str] = field(default_factory=list)


def _entry_point_source(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = entry_point.dist
    where = f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"
    return f"entry point {entry_point.value!r} from {where}"


@functools.cache
def get_plugin_manager() -> pluggy.PluginManager:
    """Load every plugin of the ``bloodcell`` entry-point group once per process."""
    manager = pluggy.PluginManager("bloodcell")
    manager.add_hookspecs(hookspecs)
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if manager.get_plugin(entry_point.name) is not None:
            continue  # the same distribution seen twice on sys.path
        source = _entry_point_source(entry_point)
        try:
            plugin = entry_point.load()
        except Exception as exc:
            raise PluginError(f"plugin {entry_point.name!r} ({source}) failed to import: {exc!r}") from exc
        register_plugin(manager, plugin, entry_point.name, source)
    try:
        manager.check_pending()  # a hookimpl whose name matches no hook spec, e.g. a typo
    except pluggy.PluginValidationError as exc:
        name = manager.get_name(exc.plugin)
        raise PluginError(f"plugin {name!r} ({_plugin_sources.get(name) if name else None}) is invalid: {exc}") from exc
    return manager


def register_plugin(manager: pluggy.PluginManager, plugin: Any, name: str, source: str) -> None:
    """Register one plugin object or module, turning pluggy's validation errors into PluginError."""
    try:
        manager.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        raise PluginError(f"plugin {name!r} ({source}) is invalid: {exc}") from exc
    _plugin_sources[name] = source


def _collect(hook_name: str, kind: type[Any]) -> dict[str, tuple[str, Any]]:
    """Call one registration hook plugin by plugin; return {registered name: (plugin name, item)}."""
    manager = get_plugin_manager()
    found: dict[str, tuple[str, Any]] = {}
    for impl in getattr(manager.hook, hook_name).get_hookimpls():
        plugin_name = impl.plugin_name

        def register(item: Any, plugin_name: str = plugin_name) -> None:
            if not isinstance(item, kind):
                raise PluginError(f"plugin {plugin_name!r} registered {item!r}, expected a {kind.__name__}")
            if item.name in found:
                raise PluginError(
                    f"{kind.__name__} {item.name!r} is registered by both plugin {found[item.name][0]!r} and plugin {plugin_name!r}"
                )
            found[item.name] = (plugin_name, item)

        try:
            impl.function(register=register)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin {plugin_name!r} failed in hook {hook_name}: {exc!r}") from exc
    return found


def model_specs() -> dict[str, ModelSpec]:
    return {name: spec for name, (_, spec) in _collect("register_models", ModelSpec).items()}


def preprocessing_steps() -> dict[str, PreprocessingStep]:
    return {name: step for name, (_, step) in _collect("register_preprocessing_steps", PreprocessingStep).items()}


def cell_locators() -> dict[str, CellLocator]:
    return {name: locator for name, (_, locator) in _collect("register_cell_locators", CellLocator).items()}


def exporters() -> dict[str, Exporter]:
    return {name: exporter for name, (_, exporter) in _collect("register_exporters", Exporter).items()}


def runtimes() -> dict[str, Runtime]:
    return {name: runtime for name, (_, runtime) in _collect("register_runtimes", Runtime).items()}


def _lookup(kind: str, name: str, available: dict[str, Any]) -> Any:
    if name not in available:
        known = ", ".join(sorted(available)) or "none"
        raise UnknownPlugin(f"unknown {kind} {name[:64]!r}; installed: {known} (see `bloodcell plugins`)")
    return available[name]


def get_model_spec(name: str) -> ModelSpec:
    return _lookup("model plugin", name, model_specs())


def get_preprocessing_step(name: str) -> PreprocessingStep:
    return _lookup("preprocessing step", name, preprocessing_steps())


def get_cell_locator(name: str) -> CellLocator:
    return _lookup("cell locator", name, cell_locators())


def get_exporter(name: str) -> Exporter:
    return _lookup("exporter", name, exporters())


def get_runtime(name: str) -> Runtime:
    return _lookup("runtime", name, runtimes())


def describe_plugins() -> list[PluginInfo]:
    """Every loaded plugin, the hooks it implements, what it registers, and where it came from."""
    manager = get_plugin_manager()
    infos = {
        name: PluginInfo(name=name, source=_plugin_sources.get(name, "registered in process"))
        for name, _ in manager.list_name_plugin()
    }
    for name, plugin in manager.list_name_plugin():
        infos[name].hooks = sorted(caller.name for caller in manager.get_hookcallers(plugin) or [])
    hooks: list[tuple[str, type, Callable[[PluginInfo], list[str]]]] = [
        ("register_models", ModelSpec, lambda info: info.models),
        ("register_preprocessing_steps", PreprocessingStep, lambda info: info.preprocessing_steps),
        ("register_cell_locators", CellLocator, lambda info: info.cell_locators),
        ("register_exporters", Exporter, lambda info: info.exporters),
        ("register_runtimes", Runtime, lambda info: info.runtimes),
    ]
    for hook_name, kind, bucket in hooks:
        for item_name, (plugin_name, _) in _collect(hook_name, kind).items():
            bucket(infos[plugin_name]).append(item_name)
    return sorted(infos.values(), key=lambda info: info.name)
