"""YAML overrides of frozen dataclass configs, plus ``--set a.b.c=value`` on the command line.

A YAML file holds a partial nested mapping; each ``--set`` item sets one dotted path and wins
over the file. Every key must name an init field of the dataclass at that level (an unknown key
is a :class:`~dllm_jax.model.config.ConfigError` naming its dotted path and the valid keys). Values
are checked against the field annotations -- ``int``, ``float``, ``str``, ``bool``, ``X | None``,
``Literal[...]``, ``tuple[X, ...]``/``tuple[X, Y]``, ``list[X]``, ``dict[K, V]`` and nested
dataclasses -- and then each dataclass's own ``__post_init__`` validation runs, its error
reported under the dotted path of the section.

Fields not mentioned keep their defaults (for a nested dataclass: the parent's default value of
that section, so ``train.optim.lr=1e-5`` keeps the rest of the default ``optim``).

``--set`` values are parsed as YAML scalars or flow lists (``[1, 8, 1]``); a field typed ``str``
receives the text exactly as written (so ``--set name=0123`` stays ``"0123"``). YAML 1.1 reads
``1e-5`` as a string; number fields accept such strings.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from dllm_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class _Raw:
    """A ``--set`` value: the text as typed and its YAML reading."""

    text: str
    value: Any

    def __repr__(self) -> str:
        return repr(self.text)


def _unraw(value: Any) -> Any:
    return value.value if isinstance(value, _Raw) else value


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"--set {dotted}: empty key in the dotted path")
    node = tree
    for i, k in enumerate(keys[:-1]):
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: {'.'.join(keys[:i + 1])} is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_sets(sets: Sequence[str]) -> dict:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a": {"b": 1}, "c": [1, 2]}`` (later items win).

    Raises:
      ConfigError: an item without ``=``, an empty key, or a value that is not YAML.
    """
    tree: dict = {}
    for item in sets:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            first = str(e).splitlines()[0]
            raise ConfigError(f"--set {key}: cannot parse {raw!r} ({first})") from None
        _set_path(tree, key, _Raw(raw.strip(), value))
    return tree


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _to_number(value: Any) -> Any:
    if isinstance(value, str):  # "1e-5" (YAML 1.1) or "inf"
        try:
            return float(value.strip())
        except ValueError:
            return value
    return value


def _coerce(tp: Any, value: Any, path: str, base: Any) -> Any:
    """``value`` checked and converted to annotation ``tp``; ``base`` is the current value."""
    origin = typing.get_origin(tp)
    if tp is Any or isinstance(tp, str | typing.TypeVar):  # unresolvable annotation: as given
        return _unraw(value)
    if dataclasses.is_dataclass(tp):
        value = _unraw(value)
        return build(tp, value, path, base if isinstance(base, tp) else None)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if _unraw(value) is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        # str last, so "--set x=3" on an ``int | str`` field gives the int.
        members.sort(key=lambda a: a is str)
        errors = []
        for a in members:
            try:
                return _coerce(a, value, path, base)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{path}: expected {_type_name(tp)}, got {_unraw(value)!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        v = _unraw(value)
        if v not in allowed and isinstance(value, _Raw) and value.text in allowed:
            v = value.text
        if v not in allowed or type(v) is not type(allowed[allowed.index(v)]):
            raise ConfigError(f"{path}: {v!r} is not one of {list(allowed)}")
        return v
    if tp is str:
        if isinstance(value, _Raw):
            return value.value if isinstance(value.value, str) else value.text
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r} (quote it in YAML)")
        return value
    value = _unraw(value)
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is list or (len(args) == 2 and args[1] is Ellipsis) or not args:
            elem = args[0] if args else Any
            out = [_coerce(elem, v, f"{path}[{i}]", None) for i, v in enumerate(value)]
        else:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} entries, got {len(value)}")
            out = [_coerce(a, v, f"{path}[{i}]", None)
                   for i, (a, v) in enumerate(zip(args, value, strict=True))]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {_coerce(kt, k, f"{path}.{k}", None): _coerce(vt, v, f"{path}.{k}", None)
                for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        value = _to_number(value)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)  # 1e3 written for a step count
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        value = _to_number(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if isinstance(tp, type) and origin is None and tp.__module__ != "builtins":
        # Some other class (e.g. an enum or a path type): construct it from the value.
        try:
            return value if isinstance(value, tp) else tp(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{path}: cannot make a {tp.__name__} from {value!r}: {e}") from None
    return value


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):  # a forward reference this module cannot resolve
        return {f.name: f.type for f in dataclasses.fields(cls)}


def build(cls: type, data: Any, path: str = "", base: Any = None) -> Any:
    """An instance of dataclass ``cls``: ``base`` (default: built from the field defaults)
    with the fields in mapping ``data`` replaced, recursively.

    Raises:
      ConfigError: an unknown key (naming its dotted path and the valid keys), a value of the
        wrong type, a missing required field, or the dataclass's own validation failing.
    """
    where = path or cls.__name__
    if data is None and base is not None:
        return base
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping of {cls.__name__} fields, "
                          f"got {data!r}")
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = [f.name for f in fields]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = f"{path}.{unknown[0]}" if path else str(unknown[0])
        raise ConfigError(f"unknown config key {key!r}; valid keys"
                          f"{' under ' + repr(path) if path else ''}: {', '.join(names)}")
    hints = _hints(cls)
    kwargs = {}
    for name, value in data.items():
        sub = f"{path}.{name}" if path else name
        current = getattr(base, name) if base is not None else _default(cls, name)
        kwargs[name] = _coerce(hints.get(name, Any), value, sub, current)
    try:
        if base is not None:
            return dataclasses.replace(base, **kwargs)
        missing = [f.name for f in fields if f.name not in kwargs and f.default is
                   dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"{where}: missing required field(s) "
                              f"{', '.join(f'{path}.{m}' if path else m for m in missing)}")
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _default(cls: type, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return None


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML file (empty file -> ``{}``).

    Raises:
      ConfigError: the file does not exist, is not YAML, or does not hold a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def load_config(cls: type, path: str | Path | None = None, sets: Sequence[str] = ()) -> Any:
    """``cls`` from its defaults, a YAML file of overrides and ``--set`` items (later wins).

    Raises:
      ConfigError: see :func:`build`, :func:`read_yaml` and :func:`parse_sets`.
    """
    if not dataclasses.is_dataclass(cls) or not isinstance(cls, type):
        raise TypeError(f"load_config needs a dataclass type, got {cls!r}")
    data = read_yaml(path) if path is not None else {}
    return build(cls, _merge(data, parse_sets(list(sets))))


def to_dict(obj: Any) -> Any:
    """Plain YAML/JSON-ready data: dataclasses -> dicts, tuples -> lists, paths -> str."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "shape", None) == ():
        return obj.item()  # a NumPy / JAX scalar
    return obj


def dump_yaml(obj: Any, path: str | Path | None = None) -> str:
    """The YAML text of ``obj`` (a dataclass or plain data), also written to ``path`` if given.

    Loading the file back with :func:`load_config` gives an equal config.
    """
    text = yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=None)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    return text


def format_config(obj: Any) -> str:
    """The resolved config as YAML, for printing."""
    return dump_yaml(obj).rstrip()
