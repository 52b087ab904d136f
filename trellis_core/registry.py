"""Model registry (class name -> class) and the config-capturing base class."""
from __future__ import annotations

import copy
import functools
import inspect
from typing import Dict, Type

import torch
from torch import nn

__all__ = ["MODEL_REGISTRY", "register_model", "get_model_class", "TrellisModel"]

MODEL_REGISTRY: Dict[str, Type[nn.Module]] = {}


def register_model(*names: str):
    """Class decorator: register under the class name and any extra alias names."""

    def deco(cls):
        for n in (cls.__name__, *names):
            MODEL_REGISTRY[n] = cls
        return cls

    return deco


def get_model_class(name: str) -> Type[nn.Module]:
    try:
        return MODEL_REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model class {name!r}; registered: {sorted(MODEL_REGISTRY)}") from None


class TrellisModel(nn.Module):
    """Base class: remembers its constructor kwargs in ``self.config`` and knows its torso.

    Subclasses list the attribute names of their half-precision torso in ``_torso`` (MODELS.md 2.13)."""

    _torso: tuple = ()

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "__init__" in cls.__dict__:
            init = cls.__dict__["__init__"]
            sig = inspect.signature(init)

            @functools.wraps(init)
            def wrapped(self, *args, **kwargs):
                if not hasattr(self, "_config_owner"):
                    bound = sig.bind(self, *args, **kwargs)
                    bound.apply_defaults()
                    cfg = {k: copy.deepcopy(v) for k, v in bound.arguments.items()
                           if k != "self" and sig.parameters[k].kind not in
                           (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}
                    for k, v in bound.arguments.items():
                        if sig.parameters[k].kind == inspect.Parameter.VAR_KEYWORD:
                            cfg.update(copy.deepcopy(v))
                    object.__setattr__(self, "_config_owner", cls)
                    object.__setattr__(self, "_pending_config", cfg)
                init(self, *args, **kwargs)
                if getattr(self, "_config_owner", None) is cls:
                    self.config = self._pending_config
                    del self._pending_config

            cls.__init__ = wrapped

    # ------------------------------------------------------------------ precision
    @property
    def dtype(self) -> torch.dtype:
        return getattr(self, "_torso_dtype", torch.float32)

    def torso_modules(self):
        return [getattr(self, n) for n in self._torso if hasattr(self, n)]

    def convert_torso(self, dtype: torch.dtype) -> "TrellisModel":
        """Cast the torso's linear/conv layers to ``dtype`` (fp16 as released, bf16, or fp32)."""
        from .modules.layers import convert_torso
        convert_torso(self.torso_modules(), dtype)
        self._torso_dtype = dtype
        return self

    def convert_to_fp16(self):
        return self.convert_torso(torch.float16)

    def convert_to_fp32(self):
        return self.convert_torso(torch.float32)

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    # ------------------------------------------------------------------ checkpoint I/O
    @classmethod
    def from_pretrained(cls, path: str, **kwargs):
        from .checkpoint import from_pretrained
        model = from_pretrained(path, **kwargs)
        if not isinstance(model, cls):
            raise TypeError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model

    def save_pretrained(self, path: str) -> None:
        from .checkpoint import save_pretrained
        save_pretrained(self, path)
