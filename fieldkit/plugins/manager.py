"""The plugin host: one pluggy manager, entry-point discovery, and the registry built from the hooks.

Plugins are found in the entry-point group ``fieldkit`` (via ``importlib.metadata``). Each one loads and
registers inside its own try/except: a broken plugin is reported by name and the rest keep working. The
except clauses catch BaseException, so a plugin that calls ``sys.exit`` is contained too; only
KeyboardInterrupt (the user's Ctrl-C) goes through.
``FIELDKIT_LOAD_PLUGINS=a,b`` limits loading to the named entry points or distributions (empty: none).
What plugin code prints while it loads or registers goes to stderr, so stdout (``fieldkit plugins --json``,
``fieldkit schema``) stays the command's own.

Mistakes that would otherwise be silent are kept as warnings (:meth:`PluginHost.warnings`): a
``fieldkit_*`` function without ``@hookimpl`` (pluggy never calls it), a hook that registered nothing, an
installed ``fieldkit-plugin-*`` distribution with no entry point in the ``fieldkit`` group, and a
``FIELDKIT_LOAD_PLUGINS`` name that matches no installed plugin. Clashes that lose a plugin, an entry point
or a type are problems (:meth:`PluginHost.problems`): two distributions with one entry-point name (or one
named ``fieldkit``), a command named like one of fieldkit's own or another plugin's type name.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from fieldkit.errors import PluginError
from fieldkit.plugins import hookspecs
from fieldkit.plugins.registry import KINDS, Registry, make_register

ENTRY_POINT_GROUP = "fieldkit"
ALLOW_ENV = "FIELDKIT_LOAD_PLUGINS"
BUILTIN_NAME = "fieldkit"

_HOOKS = {kind: f"fieldkit_register_{kind}s" for kind in KINDS}


#: The names of fieldkit's own commands (the CLI reserves them, :func:`reserve_commands`): a plugin command of
#: one of these names is ignored and reported. Filled from above, so that the host never imports the CLI.
RESERVED_COMMANDS: set[str] = set()


def reserve_commands(names: Iterable[str]) -> None:
    """Reserve fieldkit's own command ``names`` (the CLI calls it before plugin commands are collected)."""
    RESERVED_COMMANDS.update(names)


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that failed to import or to register, reported by name."""

    name: str
    stage: str
    error: str

    def __str__(self) -> str:
        return f"plugin {self.name!r} failed to {self.stage}: {self.error}"


@dataclass(frozen=True)
class PluginWarning:
    """A registration mistake that loses a plugin's types or the plugin itself without any error."""

    name: str
    stage: str
    message: str

    def __str__(self) -> str:
        return f"{self.name}: {self.message}"


@dataclass(frozen=True)
class PluginInfo:
    """What ``fieldkit plugins`` lists for one plugin."""

    name: str
    version: str
    hooks: list[str]
    types: dict[str, list[str]]


@dataclass
class PluginHost:
    """Owns the pluggy manager, the load failures and the (cached) registry."""

    pm: pluggy.PluginManager = field(default_factory=lambda: _new_manager())
    failures: list[PluginFailure] = field(default_factory=list)
    _warnings: list[PluginWarning] = field(default_factory=list)
    _problems: list[PluginWarning] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    _registry: Registry | None = None
    _commands: dict[str, tuple[str, Any]] | None = None

    def register(self, plugin: Any, name: str, version: str = "") -> None:
        """Register a plugin object (a module or a class with ``@hookimpl`` methods) under ``name``."""
        self.pm.register(plugin, name=name)
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            raise PluginError(f"plugin {name!r} implements a hook fieldkit does not define: {exc}") from None
        self.versions[name] = version
        self._warnings += [
            PluginWarning(
                name,
                "hooks",
                f"{attr} is not marked @hookimpl, so fieldkit never calls it "
                "(decorate it with fieldkit.plugin_api.hookimpl)",
            )
            for attr in _unmarked_hooks(self.pm, plugin)
        ]
        self._registry = None
        self._commands = None

    def unregister(self, name: str) -> None:
        """Remove a plugin by name (tests register plugins inline and remove them in ``finally``)."""
        self.pm.unregister(name=name)
        self.versions.pop(name, None)
        self._warnings = [w for w in self._warnings if w.name != name]
        self._registry = None
        self._commands = None

    def load_entry_points(self) -> None:
        """Load every allowed entry point of the ``fieldkit`` group, each in its own try/except. Of two
        distributions with one entry-point name the first is loaded and the second is a problem, as is an
        entry point named ``fieldkit`` (fieldkit's own plugin)."""
        allowed = _allow_list()
        entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
        self._warnings += _entry_point_warnings(entry_points, allowed)
        owners = {BUILTIN_NAME: BUILTIN_NAME}  # entry-point name -> the distribution it loads from
        for ep in entry_points:
            dist = _canonical(ep.dist.name) if ep.dist is not None else ""
            if allowed is not None and ep.name not in allowed and dist not in allowed:
                continue
            if ep.name in owners:
                self._problems.append(_entry_point_clash(ep.name, owners[ep.name], dist))
                continue
            owners[ep.name] = dist
            try:
                with _output_to_stderr():
                    plugin = ep.load()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # a broken plugin, even one calling sys.exit, spares the rest
                self.failures.append(PluginFailure(ep.name, "import", f"{type(exc).__name__}: {exc}"))
                continue
            version = ep.dist.version if ep.dist is not None else ""
            try:
                self.register(plugin, ep.name, version)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                self.failures.append(PluginFailure(ep.name, "register", f"{type(exc).__name__}: {exc}"))

    @property
    def registry(self) -> Registry:
        """Every type the registered plugins provide; a plugin whose hook raises is reported, not fatal."""
        if self._registry is None:
            self._registry = self._collect()
        return self._registry

    def _collect(self) -> Registry:
        registry = Registry()
        self.failures = [f for f in self.failures if f.stage != "register types"]
        self._warnings = [w for w in self._warnings if w.stage != "register types"]
        for kind, hook_name in _HOOKS.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                before = len(registry.problems) + sum(len(table) for table in registry.entries.values())
                try:
                    with _output_to_stderr():
                        impl.function(register=make_register(registry, kind, impl.plugin_name))
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:
                    msg = f"{hook_name}: {type(exc).__name__}: {exc}"
                    self.failures.append(PluginFailure(impl.plugin_name, "register types", msg))
                    continue
                if len(registry.problems) + sum(len(table) for table in registry.entries.values()) == before:
                    self._warnings.append(_registered_nothing(impl.plugin_name, "register types", hook_name))
        return registry

    def commands(self) -> dict[str, Any]:
        """The click commands plugins add, by name.

        A plugin whose command hook raises is reported in ``failures``, not fatal; of two plugins that add
        one name, the first wins and the second is reported; a command named like one of fieldkit's own is
        ignored and is a problem.
        """
        return {name: command for name, (_, command) in self._plugin_commands().items()}

    def _plugin_commands(self) -> dict[str, tuple[str, Any]]:
        """``{command name: (plugin, click command)}``, collected once per set of registered plugins."""
        if self._commands is None:
            import click

            self.failures = [f for f in self.failures if f.stage != "register commands"]
            self._warnings = [w for w in self._warnings if w.stage != "register commands"]
            self._problems = [p for p in self._problems if p.stage != "register commands"]
            group = click.Group("fieldkit")
            owners: dict[str, tuple[str, Any]] = {}
            for impl in self.pm.hook.fieldkit_register_commands.get_hookimpls():
                before = dict(group.commands)
                try:
                    with _output_to_stderr():
                        impl.function(cli=group)
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:
                    msg = f"fieldkit_register_commands: {type(exc).__name__}: {exc}"
                    self.failures.append(PluginFailure(impl.plugin_name, "register commands", msg))
                else:
                    if group.commands == before:
                        hook = "fieldkit_register_commands"
                        self._warnings.append(
                            _registered_nothing(impl.plugin_name, "register commands", hook)
                        )
                self._claim_commands(group, owners, impl.plugin_name)
            self._commands = owners
        return self._commands

    def _claim_commands(self, group: Any, owners: dict[str, tuple[str, Any]], plugin: str) -> None:
        """Give the commands ``plugin`` added to ``group`` to it in ``owners``; a name fieldkit or an earlier
        plugin has is ignored and reported."""
        for name, command in list(group.commands.items()):
            if name in RESERVED_COMMANDS:
                message = (
                    f"command {name!r} from plugin {plugin!r} is ignored: fieldkit has a command of that "
                    f"name; the plugin must give its command another name (e.g. {plugin}-{name})"
                )
                self._problems.append(PluginWarning(plugin, "register commands", message))
                del group.commands[name]
            elif name not in owners:
                owners[name] = (plugin, command)
            elif command is not owners[name][1]:
                msg = f"command {name!r} is ignored: plugin {owners[name][0]!r} added that name first"
                self.failures.append(PluginFailure(plugin, "register commands", msg))
                group.commands[name] = owners[name][1]

    def warnings(self) -> list[PluginWarning]:
        """The registration mistakes found so far, with every hook run (types and commands) first."""
        _ = self.registry
        self._plugin_commands()
        return list(self._warnings)

    def problems(self) -> list[str]:
        """The clashes that lose a plugin, an entry point, a command or a type, with every hook run first:
        entry points and commands (here), then types (:attr:`Registry.problems`)."""
        registry = self.registry
        self._plugin_commands()
        return [problem.message for problem in self._problems] + registry.problems

    def plugins(self) -> list[PluginInfo]:
        """Name, version, implemented hooks and registered types of every plugin."""
        by_plugin = self.registry.by_plugin()
        for command, (owner, _) in sorted(self._plugin_commands().items()):
            by_plugin.setdefault(owner, {}).setdefault("command", []).append(command)
        infos = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            infos.append(PluginInfo(name, self.versions.get(name, ""), hooks, by_plugin.get(name, {})))
        return sorted(infos, key=lambda info: (info.name != BUILTIN_NAME, info.name))


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("fieldkit")
    pm.add_hookspecs(hookspecs)
    return pm


def _canonical(name: str) -> str:
    """A distribution name as packaging normalises it: ``Fieldkit_Plugin.X`` -> ``fieldkit-plugin-x``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _unmarked_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """The ``fieldkit_*`` functions of ``plugin`` that lack the ``@hookimpl`` mark (pluggy skips them)."""
    return sorted(
        name
        for name in dir(plugin)
        if name.startswith("fieldkit_")
        and callable(inspect.getattr_static(plugin, name, None))
        and pm.parse_hookimpl_opts(plugin, name) is None
    )


def _entry_point_clash(name: str, first: str, dist: str) -> PluginWarning:
    """The problem of an entry point ``name`` of distribution ``dist`` that is not loaded: fieldkit's own
    plugin or the distribution ``first`` has that name."""
    where = f"[project.entry-points.{ENTRY_POINT_GROUP}] of {dist}'s pyproject.toml"
    if first == BUILTIN_NAME:
        taken = f"{BUILTIN_NAME!r} is fieldkit's own plugin"
        fix = f"rename the entry point in {where}"
    else:
        taken = f"distribution {first!r} has an entry point of that name, loaded first"
        fix = f"uninstall one of them (pip uninstall {dist}) or rename the entry point in {where}"
    message = f"entry point {name!r} of distribution {dist!r} is not loaded: {taken}; {fix}"
    return PluginWarning(name, "entry points", message)


@contextlib.contextmanager
def _output_to_stderr() -> Iterator[None]:
    """What plugin code prints while the block runs goes to stderr: stdout is the command's own output."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _registered_nothing(plugin: str, stage: str, hook: str) -> PluginWarning:
    return PluginWarning(
        plugin, stage, f"{hook} ran but registered nothing (did it forget to call register?)"
    )


def _entry_point_warnings(
    entry_points: metadata.EntryPoints, allowed: set[str] | None
) -> list[PluginWarning]:
    """Installed ``fieldkit-plugin-*`` distributions without a ``fieldkit`` entry point (among the allowed
    ones), and names in ``FIELDKIT_LOAD_PLUGINS`` that match neither an entry point nor a distribution."""
    found: dict[str, list[str]] = {}  # fieldkit-plugin-* distribution -> its entry-point groups
    for dist in metadata.distributions():
        # The Name header alone (parsing every distribution's whole metadata would cost ~0.1 s at startup).
        header = re.search(r"^Name:[ \t]*(\S+)", dist.read_text("METADATA") or "", re.MULTILINE)
        name = _canonical(header.group(1)) if header else ""
        if name.startswith("fieldkit-plugin-"):
            found.setdefault(name, []).extend(ep.group for ep in dist.entry_points)
    served = {_canonical(ep.dist.name) for ep in entry_points if ep.dist is not None}
    warnings = []
    for dist_name, groups in sorted(found.items()):
        if dist_name in served or (allowed is not None and dist_name not in allowed):
            continue
        near = sorted({g for g in groups if "fieldkit" in g.lower()})
        seen = f" (it has entry points in {', '.join(map(repr, near))})" if near else ""
        message = (
            f"installed, but has no entry point in the group {ENTRY_POINT_GROUP!r}{seen}, so it never loads; "
            f'its pyproject.toml needs [project.entry-points.{ENTRY_POINT_GROUP}] NAME = "module"'
        )
        warnings.append(PluginWarning(dist_name, "entry points", message))
    raw = os.environ.get(ALLOW_ENV)
    if raw is not None:
        known = {ep.name for ep in entry_points} | served | set(found) | {BUILTIN_NAME}
        for name in sorted({n.strip() for n in raw.split(",") if n.strip()}):
            if name in known or _canonical(name) in known:
                continue
            close = difflib.get_close_matches(name, sorted(known), n=1)
            guess = f"; did you mean {close[0]!r}?" if close else ""
            message = f"{ALLOW_ENV} names {name!r}, which matches no installed plugin{guess}"
            warnings.append(PluginWarning(name, "entry points", message))
    return warnings


def _allow_list() -> set[str] | None:
    raw = os.environ.get(ALLOW_ENV)
    if raw is None:
        return None
    names = {name.strip() for name in raw.split(",") if name.strip()}
    return names | {_canonical(name) for name in names}


_HOST: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide plugin host: fieldkit's own plugin plus the allowed entry points, loaded once."""
    global _HOST
    if _HOST is None:
        from fieldkit import __version__, builtin

        host = PluginHost()
        host.register(builtin, BUILTIN_NAME, __version__)
        host.load_entry_points()
        _HOST = host
    return _HOST


def reset_host() -> None:
    """Forget the process-wide host, so the next :func:`get_host` loads plugins afresh."""
    global _HOST
    _HOST = None
