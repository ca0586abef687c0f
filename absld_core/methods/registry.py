"""The one list of training methods. A method module registers its class with `@register`:

    @register("my_method", options=MyOptions, needs_teacher=False)
    class MyMethod(Method): ...

Every module of this package is imported when the package is (so a new file is found by itself), and
so are the files or modules named in the environment variable ABSLD_METHODS (paths or dotted module
names, separated by os.pathsep): a method of one's own, kept outside the package, is one file.
Config validation, the command line, the study's student list, the benchmarks and the tests all ask
this registry.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

_METHODS: dict[str, type] = {}
_DEFAULT: list[str] = []
PLUGIN_ENV = "ABSLD_METHODS"


class UnknownMethodError(ValueError):
    pass


def register(name: str, *, options: type, needs_teacher: bool = False, student: bool = True,
             default: bool = False, order: int = 100, display: str | None = None):
    """Class decorator: adds a Method subclass under `name`.

    options: the dataclass of the method's own settings (what `method:` in a config holds besides
    name and teacher); needs_teacher: it distils from method.teacher; student: it joins the study's
    comparison of students; default: the method of a config that names none (one method says so);
    order: where it stands in listings and tables (lower first; ties by name); display: its name as
    people write it in tables and figures ("ABSLD+HAM"; default: the registered name). The method's own
    study knobs are declared on its options (STUDY_PARAMS, see absld_core/declare.py)."""
    def add(cls):
        if name in _METHODS and _METHODS[name].__qualname__ != cls.__qualname__:
            raise ValueError(f"method {name!r} is registered twice ({_METHODS[name].__module__} and {cls.__module__})")
        cls.name, cls.options_class, cls.needs_teacher, cls.in_study = name, options, needs_teacher, student
        cls.order, cls.display = order, display or name
        _METHODS[name] = cls
        if default:
            _DEFAULT[:] = [name]
        return cls
    return add


def unregister(name: str) -> None:
    _METHODS.pop(name, None)


def load_plugins() -> None:
    """Import the method files named in ABSLD_METHODS (each registers itself)."""
    for entry in filter(None, os.environ.get(PLUGIN_ENV, "").split(os.pathsep)):
        path = Path(entry)
        if path.suffix == ".py":
            if not path.is_file():
                raise FileNotFoundError(f"{PLUGIN_ENV} names {entry}, which does not exist")
            mod_name = f"absld_plugin_{path.stem}_{abs(hash(str(path.resolve())))}"
            if mod_name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
        else:
            importlib.import_module(entry)


def get(name: str) -> type:
    if name not in _METHODS:
        load_plugins()
    if name not in _METHODS:
        raise UnknownMethodError(f"method.name={name!r} is invalid: known methods: {', '.join(names())}")
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
