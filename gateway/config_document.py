"""The YAML a config file is written in, read strictly: what PyYAML lets pass without a word.

A key given twice in one mapping, a key that is not text, a few KB of aliases that expand to
millions of values, and nesting deep enough to break the parser are each refused with the file
(and where known the line or key path) named.

Usage::

    data = read_document("config.yaml")   # DocumentError with a one-line reason
    check_tree(data, "config.yaml")       # keys and size: also for a dict that came from no file
"""
from __future__ import annotations

from typing import Any

import yaml


class DocumentError(ValueError):
    """A config file that cannot be read as a strict YAML document; the message names the file."""


# a config is a page or two of YAML; aliases can make a few KB of it stand for 10^8 values, which
# expanding (config._expand) would copy one by one: a 4 KB file held check-config for minutes
MAX_CONFIG_VALUES = 100_000


def check_tree(data: Any, file: str) -> None:
    """Refuse mapping keys that are not strings, and a document that expands to more than MAX_CONFIG_VALUES.

    YAML reads an unquoted ``no:``, ``1:`` or ``~:`` as a bool, an int or None: as a key here it can
    only be a mistake, and it made the error messages themselves fail. Shared (aliased) nodes are
    sized once, so the check takes the file's own size, not its expansion's.
    """
    sizes: dict[int, int] = {}

    def size(node: Any, where: str) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        total = 1
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, str):
                    raise DocumentError(f"{file}: {where + '.' if where else ''}{k!r}: a key must be a string "
                                        f"(YAML reads unquoted yes/no, numbers and ~ as other types: quote it)")
                total += size(v, f"{where}.{k}" if where else k)
        elif isinstance(node, list):
            total += sum(size(v, where) for v in node)
        sizes[id(node)] = total
        if total > MAX_CONFIG_VALUES:
            raise DocumentError(f"{file}: {where or 'the document'}: expands to more than {MAX_CONFIG_VALUES:,} "
                                f"values (through YAML aliases?)")
        return total

    size(data, "")


_YAML_MERGE = "tag:yaml.org,2002:merge"


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping.

    PyYAML keeps the last of two equal keys without a word: a second ``params:`` under ``routing``
    (an edit pasted above the old line) silently replaced the first, and the gateway ran with
    settings nobody could see in the file.
    """

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == _YAML_MERGE:
                continue  # ``<<: *defaults``: its keys may be overridden here, which is what it is for
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the base class says so
                break
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found {key!r} a second time (first at line {first.start_mark.line + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_document(path: str) -> Any:
    """The file's one YAML document, loaded with ``UniqueKeyLoader``."""
    try:
        with open(path, "rb") as f:
            return yaml.load(f, Loader=UniqueKeyLoader)
    except OSError as e:
        raise DocumentError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise DocumentError(f"{path}: not valid YAML: {e}") from None
    except RecursionError:  # PyYAML's parser recurses per level: 3,000 nested brackets were a traceback
        raise DocumentError(f"{path}: nested too deeply to read") from None
