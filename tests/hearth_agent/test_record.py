"""hearth_agent/record.py behaves as dataclasses does for what the agent declares (it replaces it: issue 25)."""

from __future__ import annotations

import dataclasses

import pytest

from hearth_agent import record


@record.dataclass(frozen=True)
class Frozen:
    a: int
    secret: str = record.field(repr=False)
    b: tuple[int, ...] = ()
    c: tuple[int, ...] = record.field(default_factory=tuple)


@dataclasses.dataclass(frozen=True)
class Std:
    a: int
    secret: str = dataclasses.field(repr=False)
    b: tuple[int, ...] = ()
    c: tuple[int, ...] = dataclasses.field(default_factory=tuple)


@record.dataclass
class Mutable:
    n: int = 0
    items: list[str] = record.field(default_factory=list)


def test_init_repr_eq_hash_as_dataclasses() -> None:
    mine, std = Frozen(1, "s3cret", b=(2,)), Std(1, "s3cret", b=(2,))
    assert repr(mine) == repr(std).replace("Std", "Frozen") == "Frozen(a=1, b=(2,), c=())"
    assert mine == Frozen(a=1, secret="s3cret", b=(2,)) and mine != Frozen(1, "other", b=(2,))
    assert mine.__eq__(std) is NotImplemented  # another class: never equal
    assert Mutable().items is not Mutable().items  # a fresh default each time
    assert hash(Frozen(1, "x", (3,))) == hash(Frozen(1, "x", (3,))) == hash((1, "x", (3,), ()))
    assert Frozen.b == () and "c" not in Frozen.__dict__  # class defaults as dataclasses leaves them
    assert Frozen.__match_args__ == Std.__match_args__


def test_frozen_refuses_assignment_mutable_is_unhashable() -> None:
    f = Frozen(1, "x")
    with pytest.raises(record.FrozenInstanceError):
        f.a = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del f.a
    assert {Frozen(1, "x", (2,)): 1}[Frozen(1, "x", (2,))] == 1
    with pytest.raises(TypeError, match="unhashable"):
        hash(Frozen(1, "x", (2,), [3]))  # type: ignore[arg-type]  # as dataclasses: a list field makes it unhashable
    m = Mutable()
    m.n += 1
    assert m == Mutable(1) and m.items == [] and Mutable.__hash__ is None


def test_wrong_arguments_are_type_errors() -> None:
    with pytest.raises(TypeError, match="missing required arguments: 'secret'"):
        Frozen(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        Frozen(1, "x", z=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="multiple values for argument 'a'"):
        Frozen(1, "x", a=2)  # type: ignore[misc]
    with pytest.raises(TypeError, match="positional arguments"):
        Frozen(1, "x", (), (), 5)  # type: ignore[call-arg]


def test_replace() -> None:
    f = Frozen(1, "x", (2,))
    assert record.replace(f, a=5) == Frozen(5, "x", (2,)) and f.a == 1
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        record.replace(f, z=1)
