"""A tiny name -> constructor registry (timm's register_model / create_model split, without the rest)."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    """Constructors registered by function name.

    >>> ENCODERS = Registry("encoder")
    >>> @ENCODERS.register
    ... def tiny(**kw): ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._fns: dict[str, Callable[..., Any]] = {}

    def register(self, fn: F) -> F:
        if fn.__name__ in self._fns:
            raise ValueError(f"{self.kind} {fn.__name__!r} registered twice")
        self._fns[fn.__name__] = fn
        return fn

    def create(self, name: str, **kwargs: Any) -> Any:
        if name not in self._fns:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {sorted(self._fns)}")
        return self._fns[name](**kwargs)

    def names(self) -> list[str]:
        return sorted(self._fns)

    def __contains__(self, name: str) -> bool:
        return name in self._fns
