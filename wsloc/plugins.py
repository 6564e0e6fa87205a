"""Names that may come from outside wsloc: a user's pooling or heatmap method.

A name resolves to, in order: one of wsloc's own (``builtins``); ``package.module:Attr``,
imported; or a name registered by an installed package under an entry-point group
(``wsloc.pooling``, ``wsloc.cam_methods``), e.g. in that package's ``pyproject.toml``::

    [project.entry-points."wsloc.pooling"]
    mypool = "mypackage.pooling:MyPool"

Every failure is a :class:`PluginError` naming the name, what was tried and what is valid.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from importlib.metadata import entry_points

__all__ = ["PluginError", "resolve", "registered"]

GROUPS = ("wsloc.pooling", "wsloc.cam_methods")


class PluginError(ValueError):
    """A user-named pooling or method that cannot be found, imported or used."""


def registered(group: str) -> dict[str, object]:
    """The entry points installed under ``group``, by name (not loaded)."""
    return {ep.name: ep for ep in entry_points(group=group)}


def _import(spec: str, what: str):
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise PluginError(f"{what} {spec!r}: write it as package.module:Name")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # missing, or broken on import (a SyntaxError, ...)
        raise PluginError(f"{what} {spec!r}: cannot import module {module_name!r} "
                          f"({type(err).__name__}: {err})") from err
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PluginError(f"{what} {spec!r}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    return obj


def resolve(name: str, group: str, builtins: Iterable[str], what: str):
    """What ``name`` refers to: the string itself when it is a built-in (the caller builds
    it), else the imported object (``module:Attr``) or the loaded entry point of ``group``.

    Args:
        name: the configured name.
        group: the entry-point group searched for names that are not built in.
        builtins: wsloc's own names.
        what: how the name is described in errors (``"model.pooling"``).
    """
    builtins = list(builtins)
    if not isinstance(name, str) or not name:
        raise PluginError(f"{what} must be a name, got {name!r}")
    if name in builtins:
        return name
    if ":" in name:
        return _import(name, what)
    found = registered(group)
    if name in found:
        try:
            return found[name].load()
        except Exception as err:  # a broken plugin: say which and why
            raise PluginError(f"{what} {name!r}: the entry point {found[name].value!r} of "
                              f"group {group!r} failed to load ({err})") from err
    raise PluginError(
        f"{what} {name!r} is not known; valid: {', '.join(builtins)}, a name registered "
        f"under the entry-point group {group!r} ({', '.join(sorted(found)) or 'none installed'}),"
        f" or package.module:Name")
