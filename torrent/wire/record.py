"""Frozen, slotted value classes that cost nothing to define: the wire's messages and events.

Theory of operation
-------------------
``@dataclass(frozen=True, slots=True)`` writes the methods of each class as
source text and compiles it, then builds the class a second time for its
slots: 0.5-1 ms per class when it is defined. The wire protocol has some
sixty messages and events, all defined when a download starts, so they were
a third of the package's import time.

A :class:`Record` subclass declares its fields as a dataclass does, by
annotations in the class body (``ClassVar`` ones are not fields), lists them
in ``__slots__`` too, and writes its own ``__init__`` (defaults go there),
which sets each field with :func:`setfield`, as a frozen dataclass's
generated one does (so creating one costs what it did). What the fields imply
is here, once, generic over them: ``repr``, equality (same class and equal
fields), ``hash`` (of the fields' tuple), immutability
(:class:`dataclasses.FrozenInstanceError`, as before), pickling and
``__match_args__``. Each class's fields are its bases' followed by its own
annotations, in order, collected when it is defined
(:meth:`Record.__init_subclass__`), which also refuses a class whose
``__slots__`` is missing (it would get a ``__dict__``) or does not list
exactly its fields.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import FrozenInstanceError
from operator import attrgetter
from typing import Any, ClassVar, Final

__all__ = ["Record", "setfield"]

#: How an ``__init__`` sets a field of its frozen instance (``__setattr__`` refuses).
setfield: Final = object.__setattr__


def _no_fields(obj: object) -> tuple[()]:
    return ()


def _tuple_getter(fields: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A function returning an instance's fields as a tuple (C ``attrgetter``)."""
    if not fields:
        return _no_fields
    get = attrgetter(*fields)
    if len(fields) > 1:
        return get
    return lambda obj: (get(obj),)


class Record:
    """Base of a frozen value class with slots; see the module docstring."""

    __slots__ = ()

    #: The fields, in order: every base's, then this class's own.
    _fields: ClassVar[tuple[str, ...]] = ()
    #: ``_astuple(obj)``: the fields' values as a tuple (equality, hash, pickling); a
    #: static ``attrgetter`` (typed Any: mypy takes a callable class attribute for a method).
    _astuple: ClassVar[Any] = staticmethod(_no_fields)
    __match_args__: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        slots = cls.__dict__.get("__slots__")
        own = tuple(name for name, ann in inspect.get_annotations(cls).items()
                    if not str(ann).startswith(("ClassVar", "typing.ClassVar")))
        names = None if slots is None else {slots} if isinstance(slots, str) else set(slots)
        if names != set(own):
            raise TypeError(f"{cls.__qualname__}.__slots__ must list its fields {own} "
                            "(a Record has no __dict__)")
        fields = cls._fields + own
        cls._fields = fields
        cls._astuple = staticmethod(_tuple_getter(fields))
        cls.__match_args__ = fields  # type: ignore[misc]

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__qualname__}({inner})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return bool(self._astuple(self) == self._astuple(other))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._astuple(self))

    def __reduce__(self) -> tuple[type[Record], tuple[Any, ...]]:
        return type(self), self._astuple(self)
