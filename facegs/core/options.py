"""Each job's options written once: dataclass fields carry their documentation, and CLIs derive from them.

A job's configuration is one dataclass (``FactoryConfig``, ``FitConfig``, ``FinetuneConfig``, ...). A
field that a command line may set carries its help text (and, where the flag differs from the field
name, its spelling) in ``metadata=opt(...)``; :func:`add_options` turns the fields into ``argparse``
arguments and :func:`from_namespace` turns the parsed values back into the dataclass. So a field's
name, type, default and documentation exist in one place, whichever CLIs expose it (the factory
driver, ``facegs refine`` and the EM pipeline all expose fields of the same configs).

Why not a library (tyro, simple-parsing, jsonargparse): the project's flags predate this helper
(``--renders``, ``--no-flip-tta``, ``--yaw MIN MAX``, JSON dicts for ``--fit-overrides``) and users'
scripts, the docs and the tests use them; those libraries derive the spelling from the field name
(``--n-renders``, ``--flip-tta/--no-flip-tta``) and add dependencies. This helper is ~150 lines of
``argparse`` with the same rules for every job.

Rules, from the field's type and default:

- ``bool`` with default False: ``--flag`` sets True; with default True: ``--no-<name>`` (or the
  metadata ``flag``) sets False.
- ``int`` / ``float`` / ``str`` (``X | None`` allowed): one value of that type.
- ``tuple[float, float]`` (or ``... | None``): two values (``metavar`` names them).
- ``dict`` (or ``dict | None``): a JSON object.
- a nested dataclass field: its own fields, under ``<field>.`` in the namespace, in an argument
  group titled by the field's help.
- fields without metadata, or with ``opt(..., cli=False)``, are not on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

OPT_KEY = "facegs.option"


def opt(help: str, *, flag: str | None = None, metavar: str | tuple[str, ...] | None = None,
        choices: Sequence[Any] | None = None, group: str | None = None, cli: bool = True) -> dict[str, Any]:
    """Metadata for a dataclass field: ``field(default=..., metadata=opt("what it does"))``.

    ``flag``: the command-line spelling when it is not ``--<name-with-dashes>`` (for a bool with
    default True: the flag that turns it off, e.g. ``--no-alpha``). ``group``: the ``--help``
    section (argument group) it is listed in. ``cli=False``: documented, but not on the command
    line. ``help=argparse.SUPPRESS`` hides an option from ``--help`` (test hooks).
    """
    return {OPT_KEY: {"help": help, "flag": flag, "metavar": metavar, "choices": choices, "group": group,
                      "cli": cli}}


def field_help(cls: type, name: str) -> str:
    """The help text of one field (for error messages and docs)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.metadata.get(OPT_KEY, {}).get("help", "")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(type without ``None``, whether None is allowed)."""
    args = typing.get_args(tp)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True  # noqa: UP007
    return tp, False


def _json_object(text: str) -> dict[str, Any]:
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at column {e.colno}): {text!r}") from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object ({{...}}), got {text!r}")
    return v


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _fmt_default(v: Any) -> str:
    if isinstance(v, tuple):
        return " ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v)
    return str(v)


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
                fields: Iterable[str] | None = None, prefix: str = "", defaults: Mapping[str, Any] | None = None,
                suppress_defaults: bool = False, root: argparse.ArgumentParser | None = None) -> None:
    """Add the command-line fields of dataclass ``cls`` to ``parser`` (see the module docstring).

    ``fields``: only these (default: every field with ``opt`` metadata). ``prefix``: namespace
    prefix of the destinations (``"factory."``). ``defaults``: other defaults than the dataclass's
    (a job that exposes another job's option with its own default). ``suppress_defaults``: options
    not given are absent from the namespace (to collect explicit overrides only).
    """
    hints = typing.get_type_hints(cls)
    wanted = None if fields is None else list(fields)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    if wanted is not None:
        unknown = [n for n in wanted if n not in by_name]
        if unknown:
            raise ValueError(f"{cls.__name__} has no fields {unknown}")
    root = root or (parser if isinstance(parser, argparse.ArgumentParser) else None)
    for name in wanted or [f.name for f in dataclasses.fields(cls)]:
        f = by_name[name]
        meta = f.metadata.get(OPT_KEY)
        if meta is None or not meta["cli"]:
            if wanted is not None and meta is None:
                raise ValueError(f"{cls.__name__}.{name} has no option metadata")
            continue
        tp, _ = _base_type(hints[name])
        default = (defaults or {}).get(name, _default(f))
        dest = prefix + name
        if dataclasses.is_dataclass(tp):
            target = root if root is not None else parser
            group = target.add_argument_group(meta["help"])
            add_options(group, tp, prefix=dest + ".", suppress_defaults=suppress_defaults,
                        defaults=default if isinstance(default, Mapping) else None, root=root)
            continue
        kw: dict[str, Any] = {"dest": dest, "help": meta["help"]}
        target_parser = parser
        if meta.get("group") and root is not None:
            groups = root.__dict__.setdefault("_facegs_groups", {})
            if meta["group"] not in groups:
                groups[meta["group"]] = root.add_argument_group(meta["group"])
            target_parser = groups[meta["group"]]
        flag = meta["flag"] or "--" + name.replace("_", "-")
        if tp is bool:
            if default is True:
                flag = meta["flag"] or "--no-" + name.replace("_", "-")
                kw["action"] = "store_false"
            else:
                kw["action"] = "store_true"
        else:
            if typing.get_origin(tp) is tuple:
                item = typing.get_args(tp)[0]
                kw.update(nargs=len(typing.get_args(tp)), type=item)
            elif tp is dict or typing.get_origin(tp) is dict:
                kw.update(type=_json_object, metavar=meta["metavar"] or "JSON")
            else:
                kw["type"] = tp
            if meta["metavar"] is not None:
                kw["metavar"] = meta["metavar"]
            elif "metavar" not in kw and "nargs" not in kw and meta["choices"] is None:
                kw["metavar"] = flag.lstrip("-").upper().replace("-", "_")
            if meta["choices"] is not None:
                kw["choices"] = list(meta["choices"])
            if default is dataclasses.MISSING:
                kw["required"] = not suppress_defaults
            elif default is not None and default != {} and not suppress_defaults and kw["help"] != argparse.SUPPRESS:
                kw["help"] += f" (default: {_fmt_default(default)})"
        if suppress_defaults:
            kw["default"] = argparse.SUPPRESS
        elif default is not dataclasses.MISSING:
            kw["default"] = default
        target_parser.add_argument(flag, **kw)


def from_namespace(cls: type, ns: argparse.Namespace | Mapping[str, Any], *, prefix: str = "",
                   base: Mapping[str, Any] | None = None, build: bool = True) -> Any:
    """The dataclass ``cls`` (or, with ``build=False``, the dict of the fields present) from parsed
    arguments; fields absent from ``ns`` keep ``base``'s value, else their default. Nested dataclass
    fields are built from their ``<field>.`` entries."""
    values = vars(ns) if isinstance(ns, argparse.Namespace) else dict(ns)
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = dict(base or {})
    for f in dataclasses.fields(cls):
        tp, _ = _base_type(hints[f.name])
        key = prefix + f.name
        if dataclasses.is_dataclass(tp):
            sub_base = out.get(f.name)
            if dataclasses.is_dataclass(sub_base):
                sub_base = dataclasses.asdict(sub_base)
            nested = from_namespace(tp, values, prefix=key + ".", base=sub_base, build=False)
            if nested or build:
                out[f.name] = tp(**nested) if build else nested
            continue
        if key in values:
            v = values[key]
            if typing.get_origin(tp) is tuple and v is not None:
                v = tuple(v)
            out[f.name] = v
    return cls(**out) if build else out


def overrides_from_args(cls: type, argv: Sequence[str], prog: str) -> dict[str, Any]:
    """Only the fields of ``cls`` that ``argv`` sets explicitly (for ``--factory-args '...'``-style
    pass-through options); an unknown or malformed option exits 2 with argparse's message."""
    p = argparse.ArgumentParser(prog=prog, add_help=False)
    add_options(p, cls, suppress_defaults=True)
    return from_namespace(cls, p.parse_args(list(argv)), build=False)
