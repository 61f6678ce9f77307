"""The plugin system: hookspecs, the plugin host and the type registries."""

from fieldkit.plugins.hookspecs import hookimpl
from fieldkit.plugins.manager import PluginFailure, PluginHost, PluginInfo, get_host, reset_host
from fieldkit.plugins.registry import KINDS, Params, Registration, Registry

__all__ = [
    "KINDS",
    "Params",
    "PluginFailure",
    "PluginHost",
    "PluginInfo",
    "Registration",
    "Registry",
    "get_host",
    "hookimpl",
    "reset_host",
]
