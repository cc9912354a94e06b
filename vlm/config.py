"""Typed configs: dataclass schemas read from YAML, overridden by `key=value`, turned into CLI flags.

    cfg = load_config(EvalConfig, "eval.yaml", ["limit=40", "models=[runs/a/final]"], what="eval config")
    parser = argparse.ArgumentParser(); add_config_flags(parser, EvalConfig)   # --limit, --model ...
    cfg = config_from_args(EvalConfig, args)                                 # flags + overrides + file
    save_config(cfg, out / "eval_config.yaml")

A field is declared once, in its dataclass: the YAML, the flags, the overrides and the saved resolved
copy are all that schema, so they cannot drift apart. A field's `metadata` may give its flag name
(`flag="--model"`), `help`, `metavar`, `repeat=True` (a list flag taking one value per use), or
`flag=None` (no flag: only `key=value`). Errors are one line naming
the field: "recipe field 'stages.0.lr': expected float, got str 'fast'".
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from vlm.atomic import write_text
from vlm.errors import UserError, read_text

_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


class _Ctx:
    """Which kind of config an error is about ('recipe field', 'eval config field' ...)."""

    def __init__(self, what: str):
        self.what = what

    def error(self, path: str, message: str) -> UserError:
        return UserError(f"{self.what} '{path}': {message}")

    def bad(self, path: str, tp: Any, value: Any) -> UserError:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        return self.error(path, f"expected {type_name(tp)}, got {type(value).__name__} {shown}")


def _convert(tp: Any, value: Any, path: str, ctx: _Ctx) -> Any:
    """value (parsed YAML) as type tp, recursively; raise UserError naming `path` when it is not."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return copy.deepcopy(value)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in (a for a in args if a is not type(None)):
            try:
                return _convert(a, value, path, ctx)
            except UserError:
                pass
        raise ctx.bad(path, tp, value)
    if origin is Literal:
        if value not in args:
            raise ctx.error(path, f"{value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, path, ctx)
    if origin is list:
        if isinstance(value, str) and args[0] is str:     # `shards: a/*.tar` means [a/*.tar]
            value = [value]
        if not isinstance(value, list):
            raise ctx.bad(path, tp, value)
        return [_convert(args[0], v, f"{path}.{i}", ctx) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ctx.bad(path, tp, value)
        return {str(k): _convert(args[1], v, f"{path}.{k}", ctx) for k, v in value.items()}
    if tp is float and (isinstance(value, (int, float)) and not isinstance(value, bool)
                        or isinstance(value, str) and _FLOAT_RE.match(value.strip())):   # PyYAML reads 1e-4 as a string
        try:
            number = float(value)
        except OverflowError:                           # an integer past float's range (400 digits)
            number = math.inf
        if not math.isfinite(number):                   # .inf / .nan: no setting means either
            raise ctx.error(path, f"expected a finite number, got {str(value)[:40]}")
        return number
    if tp in (int, str, bool) and type(value) is tp:
        return value
    if tp in (dict, list) and isinstance(value, tp):      # a bare `dict` / `list` annotation: any contents
        return copy.deepcopy(value)
    raise ctx.bad(path, tp, value)


_PLAIN = (int, float, str, bool, dict, list, type(None), Any)


def _plain(tp: Any) -> bool:
    """Whether `_convert` checks annotation `tp` as written: built from plain YAML types (unions, lists and
    dicts of them, literals); anything else (a Path, a class of the caller's) is not checked."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return True
    if origin in (Union, types.UnionType, list, dict):
        return all(_plain(a) for a in args)
    return tp in _PLAIN


def checkable_types(fn: Any) -> dict[str, Any]:
    """A callable's parameter annotations that `check_value` can check (see `_plain`), by parameter name.
    Annotations written as strings are evaluated one by one in the function's module; one that does not
    resolve (a name imported only for type checkers), or a callable without a signature, is left out."""
    import inspect
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return {}
    inner = getattr(fn, "func", fn)                     # functools.partial
    if not inspect.isfunction(inner) and not inspect.ismethod(inner):
        inner = type(inner).__call__                    # a callable object
    scope = getattr(inspect.unwrap(inner), "__globals__", {})
    out = {}
    for name, p in sig.parameters.items():
        tp = p.annotation
        if tp is inspect.Parameter.empty:
            continue
        if isinstance(tp, str):
            try:
                tp = eval(tp, dict(scope))              # an annotation of the builder's own code
            except Exception:  # noqa: BLE001, S112 - unresolvable for us: not checked
                continue
        if _plain(tp):
            out[name] = tp
    return out


def check_value(tp: Any, value: Any, path: str, what: str = "recipe field") -> Any:
    """`value` as annotation `tp` (a function's parameter, e.g. a family builder's setting), or a one-line
    UserError naming `path`, as for a config's fields."""
    return _convert(tp, value, path, _Ctx(what))


def _from_dict(cls: type, raw: Any, path: str, ctx: _Ctx) -> Any:
    if not isinstance(raw, dict):
        raise ctx.error(path or cls.__name__, f"expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in raw:
        if k not in names:
            raise UserError(f"{ctx.what} '{_join(path, k)}' is unknown; " +
                            (f"{cls.__name__} has: {', '.join(names)}" if names else "it takes no settings"))
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            kw[f.name] = _convert(hints[f.name], raw[f.name], _join(path, f.name), ctx)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"{ctx.what} '{_join(path, f.name)}' is missing (required)")
    return cls(**kw)


def from_dict(cls: type, raw: Any, path: str = "", what: str = "recipe field") -> Any:
    """Build dataclass `cls` from a mapping: unknown keys, missing required ones and wrong types are
    one-line UserErrors naming the field (`what` says which kind of config)."""
    return _from_dict(cls, raw, path, _Ctx(what))


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(data: Any) -> str:
    if dataclasses.is_dataclass(data):
        data = dataclasses.asdict(data)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=110)


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """The resolved config as YAML, written atomically (a temporary file per process: ranks of one
    torchrun job may write the same config at once)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, to_yaml(cfg))


# ---------------------------------------------------------------------------------------------
# overrides: `stages.0.steps=20`
# ---------------------------------------------------------------------------------------------
class _UniqueKeys(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (PyYAML keeps the last one in silence:
    `lr: 0.001` ... `lr: 0.5` trained at 0.5). Checked on the composed document, before construction: merging
    (`<<: *anchor`) rewrites mappings in place as they are constructed, and a merged key that a mapping
    overrides is not a duplicate."""

    def construct_document(self, node):
        seen_nodes: set[int] = set()
        stack = [node]
        while stack:
            n = stack.pop()
            if id(n) in seen_nodes:                     # an alias: the same node again
                continue
            seen_nodes.add(id(n))
            if isinstance(n, yaml.MappingNode):
                first: dict = {}
                for key_node, value_node in n.value:
                    stack += [key_node, value_node]
                    if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key, line = (key_node.tag, key_node.value), key_node.start_mark.line + 1
                    if key in first:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key_node.value!r} (lines {first[key]} and {line})",
                            key_node.start_mark)
                    first[key] = line
            elif isinstance(n, yaml.SequenceNode):
                stack += n.value
        return super().construct_document(node)


def _yaml12_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    """Integers as YAML 1.2 (and every reader of today) reads them: PyYAML follows YAML 1.1, where `steps: 010`
    is octal 8 and `1:30` is sexagesimal 90. A leading zero is decimal now; `1:30` stays a string (a typed
    field then names it); 0x10, 0b10 and 1_000 read as before."""
    text = loader.construct_scalar(node)
    digits = text.replace("_", "")
    if ":" in digits:
        return text
    if re.fullmatch(r"[-+]?0[0-9]+", digits):
        return int(digits, 10)
    return loader.construct_yaml_int(node)


_UniqueKeys.add_constructor("tag:yaml.org,2002:int", _yaml12_int)


def load_yaml(text: str) -> Any:
    """yaml.safe_load, refusing duplicate keys; every alias (`*anchor`) a copy of its own: PyYAML gives one object
    for an anchor and its aliases, so an override of one stage's `filter: *f` changed every stage sharing it (a
    review)."""
    return _unshared(yaml.load(text, Loader=_UniqueKeys), [], [0])        # a SafeLoader subclass


MAX_YAML_VALUES = 1_000_000


def _unshared(value: Any, parents: list, count: list[int]) -> Any:
    """A copy of a loaded YAML tree with no object in two places; an alias inside itself, or a document
    whose aliases expand past MAX_YAML_VALUES values, is an error."""
    if not isinstance(value, (dict, list)):
        return value
    if any(value is p for p in parents):
        raise UserError("YAML: an alias refers to a mapping or list that holds it (a recursive document)")
    count[0] += len(value)
    if count[0] > MAX_YAML_VALUES:
        raise UserError(f"YAML: its aliases expand past {MAX_YAML_VALUES:,} values")
    parents.append(value)
    try:
        if isinstance(value, dict):
            return {k: _unshared(v, parents, count) for k, v in value.items()}
        return [_unshared(v, parents, count) for v in value]
    finally:
        parents.pop()


def apply_override(raw: dict, item: str) -> None:
    """Set one dotted path in a raw mapping; the value is parsed as YAML (20, true, [a, b])."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise UserError(f"override '{item}' is not key=value (e.g. stages.0.steps=20)")
    try:
        value = load_yaml(text) if text.strip() else None
    except yaml.YAMLError as e:
        hint = ("; quote list items holding { } : or , (e.g. '[\"https://host/s-{000..009}.tar\"]')"
                if any(c in text for c in "{}:,") else "")
        raise UserError(f"override '{key}': value {text!r} is not valid YAML ({e.problem}){hint}") from None
    except UserError as e:                          # a recursive alias, one that expands without end
        raise UserError(f"override '{key}': {e}") from None
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        here = ".".join(parts[:i + 1])
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(f"override '{key}': '{here}' is not an index of a list of {len(node)}")
            part = int(part)
        elif isinstance(node, dict):
            if not last and node.get(part) is None:
                node[part] = {}
        else:
            raise UserError(f"override '{key}': '{'.'.join(parts[:i])}' is a value, not a mapping or list")
        if last:
            node[part] = value
        else:
            node = node[part]


def read_yaml(path: str | os.PathLike, what: str = "config") -> dict:
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{p}: a folder, not a {what} file (a YAML file)")
    if not p.is_file():
        raise UserError(f"{what} file not found: {p}")
    text = read_text(p, f"{what} file (a YAML file)")
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{p}: not valid YAML{where} ({what})") from None
    except UserError as e:
        raise UserError(f"{p}: {e}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{p}: a {what} is a YAML mapping")
    return raw


def load_config(cls: type, file: str | os.PathLike | None = None, overrides: list[str] = (),
                base: dict | None = None, what: str = "config field") -> Any:
    """`base` (a raw mapping, e.g. from CLI flags) <- `file` <- `overrides`, typed as `cls`."""
    raw = copy.deepcopy(base or {})
    if file is not None:
        raw.update(read_yaml(file))
    for item in overrides:
        apply_override(raw, item)
    return from_dict(cls, raw, what=what)


# ---------------------------------------------------------------------------------------------
# the CLI: one flag per field, generated from the schema
# ---------------------------------------------------------------------------------------------
def flag_of(f: dataclasses.Field) -> str | None:
    if "flag" in f.metadata:
        return f.metadata["flag"]
    return "--" + f.name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, cls: type, overrides: bool = True) -> None:
    """A flag per field of `cls` (lists take several values and may repeat; bools are switches that flip
    the default),
    `--config FILE.yaml`, and positional `key=value` overrides. Defaults stay in the schema: unset
    flags are absent from the namespace."""
    hints = typing.get_type_hints(cls)
    parser.add_argument("--config", default=None, help="a YAML file of these settings (flags and key=value win)")
    for f in dataclasses.fields(cls):
        flag = flag_of(f)
        if flag is None:
            continue
        tp, help_ = hints[f.name], f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        kw: dict[str, Any] = {"dest": f"cfg_{f.name}", "default": argparse.SUPPRESS}
        if tp is bool:
            kw.update(action="store_false" if default else "store_true")
        elif f.metadata.get("repeat"):                       # one value per flag, the flag repeated
            kw.update(action="append", metavar=f.metadata.get("metavar", f.name.upper()))
        elif typing.get_origin(tp) is list or any(typing.get_origin(a) is list for a in typing.get_args(tp)):
            kw.update(action="extend", nargs="+", metavar=f.metadata.get("metavar", f.name.upper()))
        else:
            kw.update(metavar=f.metadata.get("metavar", f.name.upper()))
        if default not in (None, dataclasses.MISSING) and tp is not bool:
            help_ = f"{help_} (default {default})".strip()
        parser.add_argument(flag, help=help_ or None, **kw)
    if overrides:
        parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings as dotted key=value (YAML values)")


def _flag_value(value: Any, tp: Any) -> Any:
    """A flag's text as YAML where the field is not a string (--limit 40 -> 40); the schema checks it."""
    if isinstance(value, list):
        inner = (typing.get_args(tp) or [Any])[0]
        inner = next((typing.get_args(a)[0] for a in typing.get_args(tp) if typing.get_origin(a) is list), inner)
        return [_flag_value(v, inner) for v in value]
    if isinstance(value, str) and tp is not str and str not in typing.get_args(tp):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value


_OVERRIDE = re.compile(r"[A-Za-z_][\w.]*=")      # `key=value` (a dotted key), as a list flag may swallow it


def config_from_args(cls: type, args: argparse.Namespace, what: str = "config field") -> Any:
    """A `--config` file, the flags given over it, then `key=value` overrides, typed as `cls`; a field set by both a
    flag and an override is refused."""
    hints = typing.get_type_hints(cls)
    flags = {}
    for f in dataclasses.fields(cls):
        if hasattr(args, f"cfg_{f.name}"):
            value = getattr(args, f"cfg_{f.name}")
            tp = hints[f.name]
            flags[f.name] = _flag_value(value, tp)
    # `--tasks a b key=value`: a list flag takes every word after it, the override too (it became a task name)
    moved = []
    for name, value in list(flags.items()):
        if isinstance(value, list):
            swallowed = [v for v in value if isinstance(v, str) and _OVERRIDE.match(v)]
            if swallowed:
                moved += swallowed
                flags[name] = [v for v in value if v not in swallowed]
                if not flags[name]:
                    del flags[name]
    raw = read_yaml(args.config) if getattr(args, "config", None) else {}
    for name, value in flags.items():      # list flags add to the file's list
        raw[name] = [*raw.get(name, []), *value] if isinstance(value, list) and isinstance(raw.get(name), list) else value
    given = {f.name: flag_of(f) or f"the {f.name.upper()} argument" for f in dataclasses.fields(cls) if f.name in flags}
    repeat = [flag_of(f) for f in dataclasses.fields(cls) if f.metadata.get("repeat") and flag_of(f)]
    for item in getattr(args, "overrides", None) or []:
        if "=" not in item:      # `--bench A B`: B is no setting (a flag of one value is given once per value)
            raise UserError(f"'{item}' is neither an option nor a key=value setting"
                            + (f"; a flag takes one value, repeat it for several ({repeat[0]} A {repeat[0]} B)"
                               if repeat else ""))
    for item in [*moved, *(getattr(args, "overrides", None) or [])]:
        root = item.partition("=")[0].split(".")[0]
        if root in given:      # which should win is a guess either way
            raise UserError(f"{root} is given twice, by {given[root]} and by '{item}'; give one")
        apply_override(raw, item)
    return from_dict(cls, raw, what=what)


def misspelt_options(config_cls: type, options: dict[str, Any], also: tuple[str, ...] = ()) -> list[str]:
    """Keys of `options` that look like a misspelling of a transformers config field (or of `also`, the
    caller's own options): `hiden_size`, `feature_selct`. HF configs keep any keyword as an attribute, so a typo
    would be kept and ignored; a key unlike every field may be one the modelling code reads with getattr
    (`head_dim`) or a legacy key the constructor converts (`rope_theta`), and passes."""
    import difflib
    import inspect
    known = (set(config_cls().to_dict()) | set(inspect.signature(config_cls.__init__).parameters)
             | set(getattr(config_cls, "attribute_map", {})) | set(also))      # hidden_size -> d_model aliases
    return sorted(k for k in options if k not in known and difflib.get_close_matches(k, known, n=1, cutoff=0.8))
