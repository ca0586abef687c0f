"""The one list of training methods. A method module registers its class with `@register`:

    @register("my_method", options=MyOptions, needs_teacher=False)
    class MyMethod(Method): ...

Every module of this package is imported when the package is (so a new file is found by itself), and
so are the files or modules named in the environment variable ABSLD_METHODS (paths or dotted module
names, separated by os.pathsep): a method of one's own, kept outside the package, is one file.
Config validation, the command line, the study's student list, the benchmarks and the tests all ask
this registry, and every lookup loads those files first, so a name means the same method in every
entry point. A name is registered once: a second class under a taken name is refused (with the two
files named) unless its @register says override=True.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path

from ..checks import ConfigError

_METHODS: dict[str, type] = {}
_DEFAULT: list[str] = []
PLUGIN_ENV = "ABSLD_METHODS"


class UnknownMethodError(ValueError):
    pass


class PluginError(ConfigError):
    """A method file named in ABSLD_METHODS that cannot be loaded, or a registration that is refused."""


def _where(cls: type) -> str:
    try:
        return f"{cls.__module__} ({inspect.getfile(cls)})"
    except (TypeError, OSError):
        return cls.__module__


def _same_definition(a: type, b: type) -> bool:
    """The same class statement run again (a module imported again), not another class of that name."""
    return a.__module__ == b.__module__ and a.__qualname__ == b.__qualname__


def register(name: str, *, options: type, needs_teacher: bool = False, student: bool = True,
             default: bool = False, order: int = 100, display: str | None = None, override: bool = False):
    """Class decorator: adds a Method subclass under `name`.

    options: the dataclass of the method's own settings (what `method:` in a config holds besides
    name and teacher); needs_teacher: it distils from method.teacher; student: it joins the study's
    comparison of students; default: the method of a config that names none (one method says so);
    order: where it stands in listings and tables (lower first; ties by name); display: its name as
    people write it in tables and figures ("ABSLD+HAM"; default: the registered name); override: replace
    a method already registered under `name` (without it a second registration is refused). The
    method's own study knobs are declared on its options (STUDY_PARAMS, see absld_core/declare.py)."""
    def add(cls):
        if not (isinstance(options, type) and dataclasses.is_dataclass(options)):
            raise PluginError(f"method {name!r} in {_where(cls)}: options={options!r} must be a dataclass "
                              f"(@dataclass(frozen=True) class ...Options(Options))")
        old = _METHODS.get(name)
        if old is not None and not override and not _same_definition(old, cls):
            raise PluginError(f"method {name!r} is already registered by {_where(old)}; {_where(cls)} registers "
                              f"it again: give it another name, or write @register({name!r}, ..., override=True) "
                              f"to replace it")
        cls.name, cls.options_class, cls.needs_teacher, cls.in_study = name, options, needs_teacher, student
        cls.order, cls.display = order, display or name
        _METHODS[name] = cls
        if default:
            _DEFAULT[:] = [name]
        return cls
    return add


def unregister(name: str) -> None:
    _METHODS.pop(name, None)


def _entries() -> list[str]:
    return [e for e in os.environ.get(PLUGIN_ENV, "").split(os.pathsep) if e]


def absolute_plugin_paths() -> None:
    """Make the file paths in ABSLD_METHODS absolute (before a command changes directory, and so that
    the workers it starts find them); dotted module names stay as they are."""
    entries = _entries()
    if entries:
        os.environ[PLUGIN_ENV] = os.pathsep.join(str(Path(e).resolve()) if e.endswith(".py") else e
                                                 for e in entries)


def _failed(entry: str, e: BaseException) -> PluginError:
    if isinstance(e, PluginError):
        return e
    if isinstance(e, SyntaxError):
        what = f"syntax error at line {e.lineno}: {e.msg}"
    elif isinstance(e, ModuleNotFoundError):
        what = f"it imports {e.name!r}, which is not installed"
    else:
        what = f"importing it raised {type(e).__name__}: {e}"
    return PluginError(f"{PLUGIN_ENV} names {entry}: {what}")


def load_plugins() -> None:
    """Import the method files named in ABSLD_METHODS (each registers itself); a file that cannot be
    loaded is a PluginError naming it (and is tried again next time, not skipped)."""
    for entry in _entries():
        path = Path(entry)
        if path.suffix == ".py":
            if not path.is_file():
                raise PluginError(f"{PLUGIN_ENV} names {entry}, which does not exist"
                                  + ("" if path.is_absolute() else f" (relative to {os.getcwd()})"))
            mod_name = f"absld_plugin_{path.stem}_{abs(hash(str(path.resolve())))}"
            if mod_name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException as e:
                del sys.modules[mod_name]
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
                raise _failed(entry, e) from e
        elif entry not in sys.modules:
            try:
                importlib.import_module(entry)
            except Exception as e:
                raise _failed(entry, e) from e


def get(name: str) -> type:
    load_plugins()   # always: a plugin that replaces a built-in name replaces it for every caller
    if name not in _METHODS:
        now = os.environ.get(PLUGIN_ENV)
        raise UnknownMethodError(f"method.name={name!r} is invalid: known methods: {', '.join(names())}; a method "
                                 f"of one's own is loaded from the files named in {PLUGIN_ENV} "
                                 f"({'now: ' + now if now else 'unset now'})")
    return _METHODS[name]


def names() -> list[str]:
    load_plugins()
    return sorted(_METHODS, key=lambda n: (_METHODS[n].order, n))


def option_names(name: str) -> set[str]:
    """The options a method declares (what `method:` may hold besides name and teacher)."""
    from dataclasses import fields
    return {f.name for f in fields(get(name).options_class)}


def student_names() -> list[str]:
    """The methods the study compares as students (every registered method that says student=True)."""
    return [n for n in names() if _METHODS[n].in_study]


def display_name(name: str) -> str:
    """How tables and figures name a method ("ABSLD+HAM"); a name that is not a method stays as it is."""
    return _METHODS[name].display if name in _METHODS else name


def default_name() -> str:
    return _DEFAULT[0]
