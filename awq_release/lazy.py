"""A package's public names, imported on first use (PEP 562): importing one light module of the
package (its settings, its result types) then never pulls in the heavy ones (torch's model stacks)."""

from collections.abc import Callable
from importlib import import_module


def lazy_names(package: str, homes: dict[str, str]) -> Callable[[str], object]:
    """The module `__getattr__` for `package`: each name in `homes` (name -> module) is read from
    its module when it is first asked for."""

    def __getattr__(name: str) -> object:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(homes[name]), name)

    return __getattr__
