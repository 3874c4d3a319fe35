"""`@dataclass`, `field`, `replace`: the part of the standard dataclasses the agent uses, without it. dataclasses
imports inspect (with ast, dis, opcode) and compiles each class's methods from source: ≈1.2 MiB of every agent's
memory (issue 25), for records that only need an __init__, a repr, equality and, frozen, a hash.

Same behaviour for what the agent declares: fields from the class's annotations in order (a base record's first),
positional or keyword arguments, `default` / `default_factory`, `repr=False` (a secret never in a repr), __eq__ on
the fields of the same class, frozen → __hash__ of the fields and assignments refused (FrozenInstanceError, an
AttributeError as dataclasses'), not frozen → unhashable. Not supported (the agent has none): ClassVar, InitVar,
__post_init__, order, slots, kw_only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform, overload

T = TypeVar("T")
_FIELDS = "__record_fields__"
__all__ = ["FrozenInstanceError", "dataclass", "field", "replace"]


class FrozenInstanceError(AttributeError):
    pass


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class Field:
    __slots__ = ("default", "default_factory", "name", "repr")

    def __init__(self, default: Any, default_factory: Callable[[], Any] | None, repr: bool) -> None:
        self.name, self.default, self.default_factory, self.repr = "", default, default_factory, repr


def field(*, default: Any = MISSING, default_factory: Callable[[], Any] | None = None, repr: bool = True) -> Any:
    if default is not MISSING and default_factory is not None:
        raise ValueError("cannot specify both default and default_factory")
    return Field(default, default_factory, repr)


@overload
def dataclass(cls: type[T], /) -> type[T]: ...
@overload
def dataclass(*, frozen: bool = False) -> Callable[[type[T]], type[T]]: ...
@dataclass_transform(field_specifiers=(field, Field))
def dataclass(cls: type[T] | None = None, /, *, frozen: bool = False) -> Any:
    if cls is None:
        return lambda c: _make(c, frozen)
    return _make(cls, frozen)


def replace(obj: T, /, **changes: Any) -> T:
    fields: tuple[Field, ...] = getattr(obj, _FIELDS)
    for name in changes:
        if not any(f.name == name for f in fields):
            raise TypeError(f"{type(obj).__name__}.__init__() got an unexpected keyword argument '{name}'")
    return type(obj)(**{f.name: getattr(obj, f.name) for f in fields} | changes)


def _make(cls: type[T], frozen: bool) -> type[T]:
    fields: dict[str, Field] = {f.name: f for base in reversed(cls.__mro__[1:]) for f in getattr(base, _FIELDS, ())}
    for name in cls.__dict__.get("__annotations__", {}):  # noqa: RUF063  # inspect is what this module avoids
        value = cls.__dict__.get(name, MISSING)
        f = value if isinstance(value, Field) else Field(value, None, True)
        f.name = name
        fields[name] = f
        if f.default is MISSING:
            if isinstance(value, Field):
                delattr(cls, name)
        else:
            setattr(cls, name, f.default)
    ordered = tuple(fields.values())
    required = [f.name for f in ordered if f.default is MISSING and f.default_factory is None]
    defaulted = False
    for f in ordered:
        if f.default is not MISSING or f.default_factory is not None:
            defaulted = True
        elif defaulted:
            raise TypeError(f"non-default argument '{f.name}' follows default argument")
    setattr(cls, _FIELDS, ordered)
    qualname = cls.__qualname__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(ordered):
            given = len(args) + 1
            raise TypeError(
                f"{qualname}.__init__() takes {len(ordered) + 1} positional arguments but {given} were given"
            )
        values = dict(zip((f.name for f in ordered), args, strict=False))
        for name, value in kwargs.items():
            if name not in fields:
                raise TypeError(f"{qualname}.__init__() got an unexpected keyword argument '{name}'")
            if name in values:
                raise TypeError(f"{qualname}.__init__() got multiple values for argument '{name}'")
            values[name] = value
        missing = [name for name in required if name not in values]
        if missing:
            raise TypeError(f"{qualname}.__init__() missing required arguments: {', '.join(map(repr, missing))}")
        for f in ordered:
            value = values[f.name] if f.name in values else f.default
            if value is MISSING and f.default_factory is not None:
                value = f.default_factory()
            object.__setattr__(self, f.name, value)

    def __repr__(self: Any) -> str:
        return f"{qualname}({', '.join(f'{f.name}={getattr(self, f.name)!r}' for f in ordered if f.repr)})"

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, f.name) == getattr(other, f.name) for f in ordered)

    explicit_hash = cls.__dict__.get("__hash__", MISSING) not in (MISSING, None)  # as dataclasses decides
    methods: dict[str, Any] = {"__init__": __init__, "__match_args__": tuple(f.name for f in ordered)}
    if "__repr__" not in cls.__dict__:
        methods["__repr__"] = __repr__
    if "__eq__" not in cls.__dict__:
        methods["__eq__"] = __eq__
    if frozen:

        def __setattr__(self: Any, name: str, value: Any) -> None:
            raise FrozenInstanceError(f"cannot assign to field '{name}'")

        def __delattr__(self: Any, name: str) -> None:
            raise FrozenInstanceError(f"cannot delete field '{name}'")

        def __hash__(self: Any) -> int:
            return hash(tuple(getattr(self, f.name) for f in ordered))

        methods |= {"__setattr__": __setattr__, "__delattr__": __delattr__}
        if not explicit_hash:
            methods["__hash__"] = __hash__
    elif not explicit_hash:
        methods["__hash__"] = None
    for name, method in methods.items():
        if callable(method):
            method.__qualname__ = f"{qualname}.{name}"
        setattr(cls, name, method)
    return cls
