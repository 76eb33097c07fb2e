"""A module that, called, runs its main function: for the places where a package's submodule
and the function it is known for share a name (`cnnzoo.transfer`, `cnnzoo.transfer.finetune`).

Binding the function under the submodule's name in the package hid the module: `import
cnnzoo.transfer.finetune as ft` gave the function, and `ft.FinetuneConfig` an AttributeError.
With the module callable, one object is both: `from cnnzoo.transfer import finetune;
finetune(...)` runs the function, and `cnnzoo.transfer.finetune.FinetuneConfig` is the class.
"""

import inspect
import sys
import types
from collections.abc import Callable
from typing import Any


def make_callable(module_name: str, function: Callable[..., Any]) -> None:
    """Make the module `module_name` callable as `function`, with its signature and docstring
    for the call (what a notebook's Shift+Tab, `inspect.signature` and `help(module.__call__)`
    show); `help(module)` still shows the module."""

    name = function.__name__

    def __call__(self: types.ModuleType, *args: Any, **kwargs: Any) -> Any:
        # Looked up at each call, as a module's functions call each other: a test (or a user)
        # that patches module.transfer patches the call too.
        return getattr(self, name)(*args, **kwargs)

    __call__.__doc__ = function.__doc__
    module = sys.modules[module_name]
    if getattr(module, name, None) is not function:
        raise AssertionError(f"{module_name}.{name} is not the function to call")
    module.__class__ = type("CallableModule", (types.ModuleType,), {"__call__": __call__})
    module.__signature__ = inspect.signature(function)  # type: ignore[attr-defined]
