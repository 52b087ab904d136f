"""Run the reference vectors of ``shared/spec/vectors`` against trellis_core (used by the tests and
the GPU bench). See shared/spec/vectors/README.md for the file format."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from .registry import get_model_class
from .sparse.tensor import SparseTensor

__all__ = ["find_spec_dir", "list_vectors", "load_vector", "run_vector"]


def find_spec_dir(start: Optional[Union[str, Path]] = None) -> Optional[Path]:
    """``<repo>/../shared/spec`` (or ``<repo>/shared/spec``) if it exists."""
    here = Path(start or __file__).resolve()
    for parent in [here, *here.parents]:
        for cand in (parent / ".." / "shared" / "spec", parent / "shared" / "spec"):
            if (cand / "MODELS.md").exists():
                return cand.resolve()
    return None


def list_vectors(spec_dir: Path) -> List[str]:
    return sorted(p.stem for p in (Path(spec_dir) / "vectors").glob("*.json"))


def load_vector(spec_dir: Path, name: str):
    from safetensors.torch import load_file
    vdir = Path(spec_dir) / "vectors"
    meta = json.loads((vdir / f"{name}.json").read_text())
    tensors = load_file(str(vdir / meta.get("safetensors", f"{name}.safetensors")))
    return meta, tensors


_STEP = re.compile(r"\[(\d+)\]|\.([A-Za-z_][A-Za-z0-9_]*)")


def _resolve(path: str, ret: Any, hooks: Dict[str, Any]):
    m = re.match(r"^(ret|hook\[([^\]]+)\])", path)
    if not m:
        raise ValueError(f"bad output path {path!r}")
    obj = ret if m.group(1) == "ret" else hooks[m.group(2)]
    for idx, attr in _STEP.findall(path[m.end():]):
        obj = obj[int(idx)] if idx else getattr(obj, attr)
    return obj


def run_vector(spec_dir: Path, name: str, device: Union[str, torch.device] = "cpu",
               dtype: torch.dtype = torch.float32, tol_scale: float = 1.0) -> Dict[str, Dict[str, Any]]:
    """Build, load, run one vector; return per-output ``{ok, max_abs_err, atol, rtol, worst_ratio}``."""
    meta, t = load_vector(spec_dir, name)
    cls = get_model_class(meta["class"])
    model = cls(**meta["kwargs"])
    sd = {k[len("state_dict."):]: v.to(dtype) for k, v in t.items() if k.startswith("state_dict.")}
    model.load_state_dict(sd, strict=True)
    model = model.to(device=device, dtype=dtype).eval()

    def inp(argname):
        spec = meta["inputs"][argname]
        if spec["kind"] == "sparse":
            return SparseTensor(t[spec["feats"]].to(device=device, dtype=dtype), t[spec["coords"]].to(device))
        return t[spec["tensor"]].to(device=device, dtype=dtype)

    args = [inp(a) for a in meta["call"]["args"]]
    kwargs = dict(meta["call"].get("kwargs", {}))
    hooks: Dict[str, Any] = {}
    handles = []
    for o in meta["outputs"].values():
        m = re.match(r"^hook\[([^\]]+)\]", o["from"])
        if m and m.group(1) not in hooks:
            sub = model.get_submodule(m.group(1))
            key = m.group(1)
            handles.append(sub.register_forward_hook(lambda mod, i, out, key=key: hooks.__setitem__(key, out)))
            hooks[key] = None
    with torch.no_grad():
        if meta.get("override", {}).get("to_representation") == "identity":
            ret = model.decode_features(*args, **kwargs)
        else:
            ret = model(*args, **kwargs)
    for h in handles:
        h.remove()
    report = {}
    for oname, o in meta["outputs"].items():
        ours = _resolve(o["from"], ret, hooks)
        ref = t[oname]
        ours = ours.detach().cpu()
        if tuple(ours.shape) != tuple(ref.shape):
            report[oname] = {"ok": False, "error": f"shape {tuple(ours.shape)} != {tuple(ref.shape)}"}
            continue
        if o.get("exact") or not ref.is_floating_point():
            ok = bool(torch.equal(ours.to(ref.dtype), ref))
            report[oname] = {"ok": ok, "exact": True,
                             "mismatches": int((ours.to(ref.dtype) != ref).sum())}
            continue
        atol, rtol = o["atol"] * tol_scale, o["rtol"] * tol_scale
        diff = (ours.double() - ref.double()).abs()
        bound = atol + rtol * ref.double().abs()
        report[oname] = {"ok": bool((diff <= bound).all()), "max_abs_err": float(diff.max()),
                         "atol": atol, "rtol": rtol, "worst_ratio": float((diff / bound).max())}
    return report
