"""The settings models, config.example.yaml and the README's config table cannot drift apart
(issue 13): every documented key exists in the models with the documented default, and every
model key is documented in both.

The models are walked generically: a mapping of named models (``targets.NAME``) or a list of
them (``watches[]``) is followed into its model class, and a union of models (a target that
is one of several protocol models) into every member; in config.example.yaml, the member is
the one whose ``Literal`` fields (``protocol``) match what the example says.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import pytest
import yaml
from pydantic import BaseModel, TypeAdapter
from pydantic.fields import FieldInfo

from syncd.config import Config, TargetSettings, TokenSource
from syncd.transcode import TranscodeConfig
from syncd.upload import registry

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.yaml"
README = REPO / "README.md"
TOKEN_KEYS = ("token", "token_file", "token_env")


# --- walking the models ------------------------------------------------------------------------

def _strip(annotation: Any) -> Any:
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def models_of(annotation: Any) -> list[type[BaseModel]]:
    """The model classes a value of ``annotation`` can be: one, a union's members, or none."""
    annotation = _strip(annotation)
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in models_of(arg)]
    if annotation is TargetSettings:  # a target is whichever protocol's model its `protocol:` names
        return [registry.lookup(name).settings for name in registry.BUILTIN]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def container_of(annotation: Any) -> tuple[str, Any] | None:
    """``("NAME", X)`` for a mapping of names to X, ``("[]", X)`` for a list of X, else None."""
    annotation = _strip(annotation)
    if typing.get_origin(annotation) in (Union, types.UnionType):  # Optional[...]
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(inner) == 1:
            return container_of(inner[0])
        return None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is dict:
        return "NAME", args[1]
    if origin in (tuple, list) and args:
        return "[]", args[0]
    return None


def documented_fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    return {name: f for name, f in model.model_fields.items() if not f.exclude}


def model_keys(models: list[type[BaseModel]], prefix: str = "") -> set[str]:
    """Every key path the models accept: ``log.level``, ``targets.NAME.retry.budget``, ``watches[].path``."""
    keys: set[str] = set()
    for model in models:
        for name, field in documented_fields(model).items():
            path = f"{prefix}{name}"
            container = container_of(field.annotation)
            if container and models_of(container[1]):
                sep = f".{container[0]}." if container[0] == "NAME" else "[]."
                keys |= model_keys(models_of(container[1]), path + sep)
            elif models_of(field.annotation):
                keys |= model_keys(models_of(field.annotation), path + ".")
            else:
                keys.add(path)
    return keys


def fields_at(path: str) -> list[FieldInfo]:
    """The fields a documented key path names (one per union member that has it)."""
    tokens = re.findall(r"\[\]|[^.\[\]]+", path)
    models: list[type[BaseModel]] = [Config]
    found: list[FieldInfo] = []
    i = 0
    while i < len(tokens):
        found = [documented_fields(m)[tokens[i]] for m in models if tokens[i] in documented_fields(m)]
        assert found, f"{path}: {tokens[i]!r} is not a key of {', '.join(m.__name__ for m in models)}"
        i += 1
        if i == len(tokens):
            return found
        annotation = found[0].annotation
        if tokens[i] in ("NAME", "[]"):
            container = container_of(annotation)
            assert container and container[0] == tokens[i], f"{path}: {tokens[i - 1]!r} is not a {tokens[i]} container"
            annotation = container[1]
            i += 1
        models = models_of(annotation)
        assert models, f"{path}: {tokens[i - 1]!r} has no keys below it"
    return found


def parses_to_default(field: FieldInfo, documented: Any) -> bool:
    """Whether the documented value, validated as the field validates it, is the field's default."""
    if field.is_required():
        return documented == "required"
    if documented is None:
        return field.get_default() is None
    adapter = TypeAdapter(Annotated[field.annotation, *field.metadata]) if field.metadata \
        else TypeAdapter(field.annotation)
    try:
        value = adapter.validate_python(documented)
    except ValueError:
        return False
    default = field.get_default()
    if isinstance(default, BaseModel) or isinstance(value, BaseModel):
        return False
    return value == default


# --- config.example.yaml -----------------------------------------------------------------------

def example_data() -> dict[str, Any]:
    """The example, with its commented-out ``receiver:`` block read as YAML too."""
    text = EXAMPLE.read_text()
    lines = text.splitlines()
    start = lines.index("# receiver:")
    block = [line[2:] for line in lines[start:] if line.startswith("# ") or line == "#"]
    data = yaml.safe_load(text)
    assert "receiver" not in data
    data.update(yaml.safe_load("\n".join(block)))
    return data


def _member_for(models: list[type[BaseModel]], data: dict[str, Any]) -> type[BaseModel]:
    """The union member the data selects by its Literal-typed keys (``protocol``)."""
    if len(models) == 1:
        return models[0]

    def fits(model: type[BaseModel]) -> bool:
        for name, field in documented_fields(model).items():
            annotation = _strip(field.annotation)
            if typing.get_origin(annotation) is Literal:
                value = data.get(name, field.get_default())
                if value not in typing.get_args(annotation):
                    return False
        return True

    fitting = [m for m in models if fits(m)]
    assert len(fitting) == 1, f"the example selects {fitting} of {models}"
    return fitting[0]


def walk_example(data: dict[str, Any], models: list[type[BaseModel]], loc: str, *, check_defaults: bool,
                 problems: list[str], seen: set[str], generic: str) -> None:
    model = _member_for(models, data)
    known = documented_fields(model)
    for key, value in data.items():
        path, key_path = f"{loc}{key}", f"{generic}{key}"
        if key not in known:
            problems.append(f"{path}: not a key of {model.__name__}")
            continue
        seen.add(key_path)
        field = known[key]
        container = container_of(field.annotation)
        if container and models_of(container[1]) and value is not None:
            items = list(value.items()) if container[0] == "NAME" else list(enumerate(value))
            for n, (name, item) in enumerate(items):
                sub = f"{path}.{name}." if container[0] == "NAME" else f"{path}[{name}]."
                sub_generic = f"{key_path}.NAME." if container[0] == "NAME" else f"{key_path}[]."
                # the first entry spells out every key with its default; later ones are examples
                walk_example(item, models_of(container[1]), sub, check_defaults=check_defaults and n == 0,
                             problems=problems, seen=seen if n == 0 else set(), generic=sub_generic)
        elif models_of(field.annotation) and isinstance(value, dict):
            walk_example(value, models_of(field.annotation), f"{path}.", check_defaults=check_defaults,
                         problems=problems, seen=seen, generic=f"{key_path}.")
        elif check_defaults and not field.is_required() and not (
                issubclass(model, TokenSource) and key in TOKEN_KEYS):
            if not parses_to_default(field, value):
                problems.append(f"{path}: the example says {value!r}, the default is {field.get_default()!r}")


def test_example_keys_exist_with_their_defaults():
    problems: list[str] = []
    walk_example(example_data(), [Config], "", check_defaults=True, problems=problems, seen=set(), generic="")
    assert problems == []


def test_every_model_key_is_in_the_example():
    seen: set[str] = set()
    walk_example(example_data(), [Config], "", check_defaults=False, problems=[], seen=seen, generic="")
    missing = model_keys([Config]) - seen
    # a token source shows one of token / token_file / token_env; its comment names the others
    text = EXAMPLE.read_text()
    missing = {k for k in missing
               if not (k.rsplit(".", 1)[-1] in TOKEN_KEYS and re.search(rf"#.*\b{k.rsplit('.', 1)[-1]}:", text))}
    assert missing == set()


# --- the README's config table --------------------------------------------------------------

def readme_rows() -> list[tuple[str, str, str]]:
    """(key cell, default cell, meaning cell) of the README's `| key | default | meaning |` table."""
    lines = README.read_text().splitlines()
    start = lines.index("| key | default | meaning |")
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows.append((cells[0], cells[1], cells[2]))
    return rows


def _names(cell: str) -> list[str]:
    """``targets.NAME.timeout.connect` / `.read`` -> both full paths; ``a` / `b`` -> siblings."""
    names = re.findall(r"`([^`]+)`", cell)
    first = names[0]
    parent = first.rsplit(".", 1)[0] + "." if "." in first else ""
    return [first] + [parent + n.lstrip(".") for n in names[1:]]


def _defaults(cell: str, count: int) -> list[Any]:
    parts = [p.strip() for p in cell.split(" / ")]
    if len(parts) == 1:
        parts = parts * count
    assert len(parts) == count, f"{cell!r}: one default, or one per key"
    out = []
    for part in parts:
        if part in ("required", "none"):
            out.append(part if part == "required" else None)
        else:
            assert part.startswith("`") and part.endswith("`"), f"{part!r}: a default is `value`, none or required"
            out.append(yaml.safe_load(part.strip("`")))
    return out


def readme_documented() -> dict[str, Any]:
    """Documented key path -> documented default (``receiver``'s keys are listed in its meaning)."""
    documented: dict[str, Any] = {}
    for key_cell, default_cell, meaning in readme_rows():
        names = _names(key_cell)
        for name, default in zip(names, _defaults(default_cell, len(names))):
            documented[name] = default
        if names == ["receiver"]:
            for sub in re.findall(r"`(\w+)`", meaning):
                documented.setdefault(f"receiver.{sub}", ...)  # the default is the serve flag's
    return documented


def test_readme_keys_exist_with_their_defaults():
    problems = []
    for path, default in readme_documented().items():
        try:
            candidates = fields_at(path)
        except AssertionError as exc:
            problems.append(str(exc).splitlines()[0])
            continue
        if default is not ... and not any(parses_to_default(f, default) for f in candidates):
            problems.append(f"{path}: the README says {default!r}, the default is {candidates[0].get_default()!r}")
    assert problems == []


def test_every_model_key_is_in_the_readme():
    assert model_keys([Config]) - set(readme_documented()) == set()


def test_readme_names_every_transcode_setting():
    row = next(meaning for key, _, meaning in readme_rows() if key == "`watches[].transcode`")
    listed = re.findall(r"`(\w+)`", row.split("a mapping of", 1)[1].split(";", 1)[0])
    assert listed == [f.name for f in fields(TranscodeConfig)]


# --- the checks above can fail ----------------------------------------------------------------

def test_a_wrong_default_and_an_unknown_key_are_caught():
    data = example_data()
    data["watches"][0]["remote_dir"] = "{watch}/{date}"
    data["log"]["colour"] = True
    problems: list[str] = []
    walk_example(data, [Config], "", check_defaults=True, problems=problems, seen=set(), generic="")
    assert sorted(problems) == ["log.colour: not a key of Log",
                                "watches[0].remote_dir: the example says '{watch}/{date}', the default is ''"]


@pytest.mark.parametrize("path,documented,ok", [
    ("targets.NAME.part_size", "50MiB", True), ("targets.NAME.part_size", "64MiB", False),
    ("watches[].settle.max_wait", "10m", True), ("watches[].include", [], True),
    ("watches[].remote_dir", "", True), ("watches[].remote_dir", "{watch}", False),
    ("journal", "required", True), ("metrics.listen", None, True), ("log.level", "DEBUG", False),
])
def test_defaults_are_compared_as_validated(path, documented, ok):
    assert any(parses_to_default(f, documented) for f in fields_at(path)) is ok


def test_a_union_of_target_models_is_walked_by_member():
    from pydantic import Field

    from syncd.upload.chunked import Settings as Target

    class Other(TokenSource):
        protocol: Literal["other"]
        bucket: str = "b"

    union = Annotated[Target | Other, Field(discriminator="protocol")]
    assert set(models_of(union)) == {Target, Other}
    assert _member_for(models_of(union), {"protocol": "other"}) is Other
    assert _member_for(models_of(union), {"url": "http://x/"}) is Target  # protocol defaults to chunked
    assert container_of(dict[str, union])[0] == "NAME"
