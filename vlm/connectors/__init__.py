"""Connectors: how encoder tokens reach the LLM. `build_connector(cfg, in_dim, out_dim)` by type name."""
from __future__ import annotations

from typing import Callable

from torch import nn

from vlm.errors import UserError

_CONNECTORS: dict[str, Callable[..., nn.Module]] = {}


def register_connector(*names: str):
    def deco(fn):
        for n in names:
            if n in _CONNECTORS:
                raise ValueError(f"connector '{n}' registered twice")
            _CONNECTORS[n] = fn
        return fn
    return deco


def build_connector(cfg: dict, in_dim: int, out_dim: int) -> nn.Module:
    kind = cfg.get("type", "mlp2x_gelu")
    if kind not in _CONNECTORS:
        raise UserError(f"unknown connector type '{kind}'; known: {sorted(_CONNECTORS)}")
    return _CONNECTORS[kind](in_dim=in_dim, out_dim=out_dim, **{k: v for k, v in cfg.items() if k != "type"})


def list_connectors() -> list[str]:
    return sorted(_CONNECTORS)


from vlm.connectors import mlp  # noqa: E402,F401  (registers)
