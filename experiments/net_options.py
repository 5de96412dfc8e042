"""Short command-line names for network options.

The network is configured under ``model.init_args.net.init_args``; typing that for every
override is long, so ``--model.init_args.<name>`` may name a network option when ``<name>`` is
not an option of the module itself:

    --model.init_args.backbone=efficientnet_b3   ->  --model.init_args.net.init_args.backbone=...
    --model.init_args.lr_step=5                  ->  unchanged (not a network option: the parser
                                                     refuses it with its own message)

Which classes are meant is read from the same config files the parser reads (the defaults, each
``--config`` in order) and the command line's own ``--model.class_path`` / ``--model.init_args.net.class_path``.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

PREFIX = "--model.init_args."
NET_PREFIX = "--model.init_args.net.init_args."


class ConfigError(ValueError):
    """The configuration or command line cannot be used as given (the message says why)."""


class UnknownOptionError(ConfigError):
    """A command-line option that no part of the configuration accepts (with the closest ones)."""


def closest(name: str, candidates: Sequence[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(name, sorted(candidates), n=n, cutoff=0.6)


def unknown_option(option: str, where: str, candidates: Sequence[str]) -> UnknownOptionError:
    name = option.rpartition(".")[2]
    near = closest(name, candidates)
    hint = f"; did you mean {' or '.join(repr(c) for c in near)}?" if near else ""
    return UnknownOptionError(f"unknown option {option}: {where} has no option {name!r}{hint}")


def _import(class_path: Optional[str]) -> Optional[type]:
    if not class_path or "." not in class_path:
        return None
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None  # the parser reports a bad class path itself


def _parameters(cls: Optional[type]) -> set[str]:
    """The keyword options of ``cls``, following ``**kwargs`` up the class hierarchy."""
    names: set[str] = set()
    for klass in inspect.getmro(cls) if cls is not None else ():
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters.values()
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return names - {"self"}


def _value(args: Sequence[str], i: int) -> tuple[str, Optional[str]]:
    key, sep, value = args[i].partition("=")
    return key, (value if sep else (args[i + 1] if i + 1 < len(args) else None))


def selected_classes(args: Sequence[str], default_configs: Sequence[Path]) -> tuple[Optional[str], Optional[str]]:
    """``(model class_path, net class_path)`` as the configs and the command line leave them."""
    model_path = net_path = None

    def absorb(config: Any) -> None:
        nonlocal model_path, net_path
        model = (config or {}).get("model") if isinstance(config, dict) else None
        if not isinstance(model, dict):
            return
        model_path = model.get("class_path", model_path)
        net = (model.get("init_args") or {}).get("net")
        if isinstance(net, dict):
            net_path = net.get("class_path", net_path)

    for path in default_configs:
        if Path(path).is_file():
            absorb(yaml.safe_load(Path(path).read_text()))
    for i, arg in enumerate(args):
        key, value = _value(args, i)
        if key in ("--config", "-c") and value and Path(value).is_file():
            absorb(yaml.safe_load(Path(value).read_text()))
        elif key == "--model.class_path" or (key == "--model" and value and not Path(value).is_file()):
            model_path = value
        elif key in ("--model.init_args.net.class_path", "--model.init_args.net"):
            net_path = value
    return model_path, net_path


def expand_net_shorthands(args: Sequence[str], default_configs: Sequence[Path] = ()) -> list[str]:
    """``args`` with every ``--model.init_args.<network option>`` spelt out in full."""
    model_path, net_path = selected_classes(args, default_configs)
    module_cls, net_cls = _import(model_path), _import(net_path)
    module_options, net_options = _parameters(module_cls), _parameters(net_cls)
    out = []
    for arg in args:
        key = arg.partition("=")[0]
        if arg.startswith(NET_PREFIX) and net_cls is not None:
            name = key[len(NET_PREFIX):]
            if "." not in name and name not in net_options:
                raise unknown_option(key, f"the network {net_cls.__name__}", net_options)
        elif arg.startswith(PREFIX) and not arg.startswith("--model.init_args.net."):
            name = key[len(PREFIX):]
            if "." not in name and name not in module_options:
                if name in net_options:
                    arg = NET_PREFIX + arg[len(PREFIX):]
                elif module_cls is not None and net_cls is not None:
                    where = f"the module {module_cls.__name__} or its network {net_cls.__name__}"
                    raise unknown_option(key, where, module_options | net_options)
        out.append(arg)
    return out
