"""Reading config YAML (experiments, sweeps, ``key=value`` override values) defensively.

``yaml.safe_load`` runs no code, but it still accepts three things a config must not have:

- **duplicate keys**: PyYAML keeps the last silently, so ``lr: 1e-4`` written twice in a long
  file changes the run without a trace. Here a key given twice is a ``ConfigError`` naming the
  key and both lines.
- **alias bombs** ("billion laughs"): a dozen lines of anchors (``&a``) and aliases (``*a``) that
  refer to each other expand to billions of values. PyYAML builds them as shared references, but
  everything that walks the result (merging, validation, logging) pays for every expanded value.
  Before anything is built, the composed node graph is measured — each distinct node once, so the
  check is linear in the file — and a document that would expand to more than
  ``MAX_EXPANDED_NODES`` values is refused.
- **huge files**: anything over ``MAX_CONFIG_BYTES`` is refused before parsing.

One reading differs from PyYAML's YAML 1.1 default, as YAML 1.2 has it: ``1e-4`` (exponent, no
dot) is a number, not the string ``'1e-4'``. Config numbers are strict (a string is not coerced),
so this spelling would otherwise be refused.

Configs are deltas of tens of lines; the limits are far above any real one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from pipelines.config_errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20
MAX_EXPANDED_NODES = 100_000


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping key given twice and reads ``1e-4`` as a float."""

    source = "config"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = lines.get(key)
            except TypeError:
                continue  # an unhashable key: SafeLoader's own error follows
            if first is not None:
                raise ConfigError(
                    f"{self.source}: line {line}: key {key!r} is given twice (first on line {first}); keep one"
                )
            lines[key] = line
        return super().construct_mapping(node, deep=deep)


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def expanded_size(node: yaml.Node, *, limit: int = MAX_EXPANDED_NODES) -> int:
    """How many values ``node`` expands to, aliases followed (capped just past ``limit``).

    Each distinct node is measured once (``sizes`` is keyed by node identity; an alias is the
    same node object as its anchor), so the work is linear in the number of nodes in the file,
    however much the aliases multiply them."""
    sizes: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        known = sizes.get(id(n))
        if known is not None:
            return known
        sizes[id(n)] = limit + 1  # a node that contains itself (a recursive alias) is too big
        total = 1
        if isinstance(n, yaml.SequenceNode):
            children = n.value
        elif isinstance(n, yaml.MappingNode):
            children = [part for pair in n.value for part in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > limit:
                break
        sizes[id(n)] = min(total, limit + 1)
        return sizes[id(n)]

    return size(node)


def parse_config_text(text: str, *, source: str) -> Any:
    """Parse one YAML document with the checks of the module docstring (errors name ``source``)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source} is {len(text)} characters long; a config holds deltas (at most {MAX_CONFIG_BYTES})")
    loader = _ConfigLoader(text)
    loader.source = source
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if expanded_size(node) > MAX_EXPANDED_NODES:
            raise ConfigError(
                f"{source}: its anchors and aliases expand to more than {MAX_EXPANDED_NODES} values "
                "(an alias bomb?); write the values out or use fewer nested aliases"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source} is not valid YAML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{source} is nested too deeply to be a config") from None
    finally:
        loader.dispose()


def read_config_mapping(path: str | os.PathLike, *, what: str = "config") -> dict[str, Any]:
    """One YAML config file as a mapping (its ``base:`` left as it is); every problem is a ``ConfigError`` naming the file
    (``FileNotFoundError`` when it does not exist)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; pass a YAML file (e.g. experiments/quickstart.yaml)")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{what} {path} is {size} bytes; a config holds deltas (at most {MAX_CONFIG_BYTES})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what} {path} is not UTF-8 text: {err}") from None
    data = parse_config_text(text, source=f"{what} {path}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping at the top level")
    return data


# A config file may start from another: ``base: salma_1b.yaml`` (a path relative to the file's
# folder) is read first and the file's own keys are applied on top of it.
BASE_KEY = "base"
MAX_BASE_DEPTH = 8


def read_config_file(path: str | os.PathLike, *, what: str = "config") -> dict[str, Any]:
    """A config YAML as a mapping, its ``base:`` chain resolved: nested mappings merge key by key,
    any other value (a list included) replaces the base's. Errors name the file (``what`` says
    which sort of config it is) and, for a base, the file that asked for it."""
    from salma.config import deep_update

    root = Path(path)
    chain: list[Path] = []
    layers: list[dict[str, Any]] = []
    current = root
    while True:
        label = what if not chain else f"{what} {root}: its base"
        if current.resolve() in chain:
            raise ConfigError(f"{label} {current} is already in the chain of bases ({' -> '.join(map(str, chain))})")
        if len(chain) == MAX_BASE_DEPTH:
            raise ConfigError(f"{what} {root}: more than {MAX_BASE_DEPTH} nested bases")
        data = read_config_mapping(current, what=label)
        chain.append(current.resolve())
        base = data.pop(BASE_KEY, None)
        layers.append(data)
        if base is None:
            break
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{label} {current}: base must be the path of another YAML file (e.g. base: salma_1b.yaml)")
        current = current.parent / base
    merged: dict[str, Any] = {}
    for layer in reversed(layers):
        merged = deep_update(merged, layer)
    return merged
