"""Image-to-3D and text-to-3D generation as the released pipelines do it (MODELS.md 5, 6, 8).

    pipe = ImageTo3DPipeline.from_pretrained("microsoft/TRELLIS-image-large")   # or a local folder
    out = pipe.run(Image.open("x.png"), seed=0)
    save_mesh(out["mesh"][0], "mesh.glb")

Steps: condition (DINOv2 ``x_prenorm`` tokens + parameter-free layer norm, or CLIP text
``last_hidden_state``) -> seeded SS noise on the CPU generator -> SS flow with the pipeline's sampler
(CFG with guidance interval) -> SS decoder, occupancy = logits > 0 -> SLat noise (same stream) ->
SLat flow -> de-normalise -> mesh decoder -> surface extraction.

Surface extraction: FlexiCubes is not available here. When scikit-image is installed, trellis_core's
marching-cubes approximation is used; otherwise :func:`marching_tetrahedra` below (numpy), on the same
prepared vertex SDF grid (corner averaging, -1/res shift, +1 outside). Both ignore the FlexiCubes
weights and vertex deformation, so meshes differ in detail from the reference: an approximation.

Condition encoders come from ``transformers``. Tests use tiny seeded ones (:meth:`DinoV2Conditioner.tiny`,
:meth:`ClipTextConditioner.tiny`), which are random and NOT pretrained.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .pipeline import TrellisPipeline
from .sparse.tensor import SparseTensor

__all__ = ["DinoV2Conditioner", "ClipTextConditioner", "ImageTo3DPipeline", "TextTo3DPipeline",
           "marching_tetrahedra", "extract_mesh", "save_mesh", "write_pipeline", "COND_MODEL_REPOS"]

COND_MODEL_REPOS = {"dinov2_vitl14_reg": "facebook/dinov2-with-registers-large",
                    "openai/clip-vit-large-patch14": "openai/clip-vit-large-patch14"}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- condition encoders
class DinoV2Conditioner(nn.Module):
    """Images (B, 3, 518, 518) in [0, 1] -> (B, 1 + registers + patches, C) normalised tokens."""

    def __init__(self, model):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.image_size = getattr(model.config, "image_size", 518)

    @classmethod
    def from_pretrained(cls, name_or_path: str) -> "DinoV2Conditioner":
        from transformers import AutoModel
        return cls(AutoModel.from_pretrained(COND_MODEL_REPOS.get(name_or_path, name_or_path)))

    @classmethod
    def tiny(cls, seed: int = 0, hidden_size: int = 32, num_layers: int = 1, num_heads: int = 2,
             image_size: int = 518, patch_size: int = 14) -> "DinoV2Conditioner":
        """Random, seeded, NOT pretrained (the registry's tiny DINOv2 at this size): tests and the offline demo."""
        from .models.tiny import tiny_dinov2
        return cls(tiny_dinov2(seed, hidden_size=hidden_size, num_hidden_layers=num_layers,
                               num_attention_heads=num_heads, intermediate_size=hidden_size * 4, mlp_ratio=4,
                               image_size=image_size, patch_size=patch_size))

    @property
    def channels(self) -> int:
        return self.model.config.hidden_size

    def save_pretrained(self, path: str) -> None:
        self.model.save_pretrained(path)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bicubic",
                                   align_corners=False, antialias=True)
        mean = torch.tensor(_IMAGENET_MEAN, device=images.device)[:, None, None]
        std = torch.tensor(_IMAGENET_STD, device=images.device)[:, None, None]
        x = ((images - mean) / std).to(next(self.model.parameters()).dtype)
        h = self.model(pixel_values=x, output_hidden_states=True).hidden_states[-1]  # x_prenorm
        return F.layer_norm(h.float(), h.shape[-1:])

    def negative(self, cond: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(cond[:1])


class ClipTextConditioner(nn.Module):
    """Prompts -> (B, 77, C) ``last_hidden_state``; negative = encoding of ``""``."""

    def __init__(self, model, tokenizer, max_length: int = 77):
        super().__init__()
        self.model, self.tokenizer, self.max_length = model.eval().requires_grad_(False), tokenizer, max_length

    @classmethod
    def from_pretrained(cls, name_or_path: str) -> "ClipTextConditioner":
        from transformers import AutoTokenizer, CLIPTextModel
        p = COND_MODEL_REPOS.get(name_or_path, name_or_path)
        return cls(CLIPTextModel.from_pretrained(p), AutoTokenizer.from_pretrained(p))

    @classmethod
    def tiny(cls, seed: int = 0, hidden_size: int = 32, num_layers: int = 1, num_heads: int = 2,
             workdir: Optional[str] = None) -> "ClipTextConditioner":
        """Random, seeded, NOT pretrained, with a byte-level vocabulary and no merges."""
        import tempfile
        from transformers import CLIPTokenizer

        from .models.tiny import tiny_clip_text
        d = workdir or tempfile.mkdtemp(prefix="tiny-clip-")
        os.makedirs(d, exist_ok=True)
        chars = _byte_chars()
        vocab = {c: i for i, c in enumerate(chars)}
        vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
        vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
        with open(os.path.join(d, "vocab.json"), "w") as f:
            json.dump(vocab, f)
        with open(os.path.join(d, "merges.txt"), "w") as f:
            f.write("#version: 0.2\n")
        tok = CLIPTokenizer(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"))
        model = tiny_clip_text(seed, vocab_size=len(vocab), hidden_size=hidden_size, intermediate_size=hidden_size * 4,
                               num_hidden_layers=num_layers, num_attention_heads=num_heads,
                               bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                               pad_token_id=vocab["<|endoftext|>"])
        return cls(model, tok)

    @property
    def channels(self) -> int:
        return self.model.config.hidden_size

    def save_pretrained(self, path: str) -> None:
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    @torch.no_grad()
    def forward(self, prompts: Sequence[str]) -> torch.Tensor:
        tok = self.tokenizer(list(prompts), max_length=self.max_length, padding="max_length", truncation=True,
                             return_tensors="pt")
        dev = next(self.model.parameters()).device
        return self.model(input_ids=tok["input_ids"].to(dev)).last_hidden_state.float()

    def negative(self, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.forward([""])


def _byte_chars() -> List[str]:
    """The 256 printable stand-ins of byte-level BPE (printable latin-1 bytes map to themselves,
    the others to code points from 256 up, in byte order)."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


# ----------------------------------------------------------------------------- surface extraction
_TETS = np.array([[0, 1, 3, 7], [0, 3, 2, 7], [0, 2, 6, 7], [0, 6, 4, 7], [0, 4, 5, 7], [0, 5, 1, 7]])
_CORNERS = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]])


def marching_tetrahedra(cube_coords: np.ndarray, corner_sdf: np.ndarray, res: int):
    """Zero level set of per-cube corner values (M, 8) (corner order x fastest) as a triangle mesh.

    Each cube is split into 6 tetrahedra around its (0,0,0)-(1,1,1) diagonal (the same split in
    every cube, so neighbours share faces and the surface is closed where the cubes are); edge
    crossings are interpolated linearly and shared by global edge id. Triangles are oriented with
    their normal pointing from negative (inside) to positive. Returns vertices in [-0.5, 0.5]
    and int64 faces."""
    cube_coords = np.asarray(cube_coords, dtype=np.int64)
    corner_sdf = np.asarray(corner_sdf, dtype=np.float64)
    pos = cube_coords[:, None, :] + _CORNERS[None]                     # (M, 8, 3)
    tp = pos[:, _TETS].reshape(-1, 4, 3)                               # (T, 4, 3)
    tv = corner_sdf[:, _TETS].reshape(-1, 4)                           # (T, 4)
    inside = tv < 0
    cnt = inside.sum(1)
    keep = (cnt > 0) & (cnt < 4)
    tp, tv, inside, cnt = tp[keep], tv[keep], inside[keep], cnt[keep]
    if len(tv) == 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    order = np.argsort(~inside, axis=1, kind="stable")                 # inside vertices first
    R = res + 1
    gid = (tp[..., 0] * R + tp[..., 1]) * R + tp[..., 2]
    tris = []                                                          # (T', 3, 2) vertex-pair per corner
    one = cnt == 1
    three = cnt == 3
    two = cnt == 2
    o = order
    if one.any():
        a = o[one]
        tris.append((np.where(one)[0], np.stack([np.stack([a[:, 0], a[:, k]], 1) for k in (1, 2, 3)], 1)))
    if three.any():
        a = o[three]
        tris.append((np.where(three)[0], np.stack([np.stack([a[:, 3], a[:, k]], 1) for k in (0, 1, 2)], 1)))
    if two.any():
        a = o[two]
        idx = np.where(two)[0]
        ac, ad, bd, bc = [np.stack([a[:, i], a[:, j]], 1) for i, j in ((0, 2), (0, 3), (1, 3), (1, 2))]
        tris.append((idx, np.stack([ac, ad, bd], 1)))
        tris.append((idx, np.stack([ac, bd, bc], 1)))
    ti = np.concatenate([t for t, _ in tris])
    pairs = np.concatenate([p for _, p in tris])                       # (F, 3, 2) local vertex ids
    ga = np.take_along_axis(gid[ti], pairs[..., 0], 1)
    gb = np.take_along_axis(gid[ti], pairs[..., 1], 1)
    key = np.minimum(ga, gb) * (R ** 3) + np.maximum(ga, gb)
    ukey, inv = np.unique(key.reshape(-1), return_inverse=True)
    va = np.take_along_axis(tv[ti], pairs[..., 0], 1).reshape(-1)
    vb = np.take_along_axis(tv[ti], pairs[..., 1], 1).reshape(-1)
    pa = np.take_along_axis(tp[ti], pairs[..., 0:1].repeat(3, -1), 1).reshape(-1, 3)
    pb = np.take_along_axis(tp[ti], pairs[..., 1:2].repeat(3, -1), 1).reshape(-1, 3)
    w = (va / np.where(va - vb == 0, 1e-12, va - vb))[:, None]
    p = pa + w * (pb - pa)
    verts = np.zeros((len(ukey), 3))
    verts[inv] = p
    faces = inv.reshape(-1, 3)
    # orient: normal along (outside centroid - inside centroid) of the source tetrahedron
    ins = inside[ti][..., None]
    cin = (tp[ti] * ins).sum(1) / np.maximum(ins.sum(1), 1)
    cout = (tp[ti] * ~ins).sum(1) / np.maximum((~ins).sum(1), 1)
    v = verts[faces]
    n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    flip = (n * (cout - cin)).sum(1) < 0
    faces[flip] = faces[flip][:, [0, 2, 1]]
    return (verts / res - 0.5).astype(np.float32), faces.astype(np.int64)


def extract_mesh(feats: SparseTensor, resolution: int) -> List[Dict[str, Any]]:
    """Mesh-decoder output (per 4x-resolution cube: 8 sdf, 24 deform, 21 weights, [48 colour]) ->
    ``[{"vertices", "faces"}]`` per instance (approximation, see the module docstring)."""
    try:
        import skimage  # noqa: F401
        from .models.mesh import extract_meshes
        return [{"vertices": m.vertices.numpy(), "faces": m.faces.numpy()}
                for m in extract_meshes(feats, resolution=resolution, use_color=False)]
    except ImportError:
        pass
    from .models.mesh import corner_grid
    out = []
    for s in feats.layout:
        f = feats.feats[s].float()
        coords = feats.coords[s][:, 1:].long()
        sdf = f[:, :8].reshape(-1, 8, 1) - 1.0 / resolution
        grid = corner_grid(coords, sdf, resolution, 1.0)[..., 0]
        corners = torch.as_tensor(_CORNERS, device=coords.device)
        cpos = coords[:, None, :] + corners[None]
        vals = grid[cpos[..., 0], cpos[..., 1], cpos[..., 2]]
        v, fc = marching_tetrahedra(coords.cpu().numpy(), vals.cpu().numpy(), resolution)
        out.append({"vertices": v, "faces": fc})
    return out


def save_mesh(mesh: Dict[str, np.ndarray], path: str) -> str:
    """Write a mesh (``.glb``, ``.ply``, ``.obj``, ... by extension) with trimesh."""
    import trimesh
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    trimesh.Trimesh(vertices=mesh["vertices"], faces=mesh["faces"], process=False).export(path)
    return path


# ----------------------------------------------------------------------------- pipelines
class _Generator:
    kind = "image"

    def __init__(self, core: TrellisPipeline, conditioner: nn.Module):
        self.core, self.conditioner = core, conditioner

    @classmethod
    def from_pretrained(cls, path: str, device=None, conditioner: Optional[nn.Module] = None):
        roles = ["sparse_structure_flow_model", "sparse_structure_decoder", "slat_flow_model", "slat_decoder_mesh"]
        core = TrellisPipeline.from_pretrained(path, roles=roles, device=device)
        if conditioner is None:
            key = "image_cond_model" if cls.kind == "image" else "text_cond_model"
            name = core.args.get(key)
            if name is None:
                raise KeyError(f"{path}/pipeline.json has no {key}")
            local = os.path.join(path, name)
            enc = DinoV2Conditioner if cls.kind == "image" else ClipTextConditioner
            conditioner = enc.from_pretrained(local if os.path.isdir(local) else name)
        if device is not None:
            conditioner.to(device)
        return cls(core, conditioner)

    def to(self, device):
        self.core.to(device)
        self.conditioner.to(device)
        return self

    @property
    def device(self):
        return self.core.device

    @torch.no_grad()
    def run_cond(self, cond, neg_cond, seed: int = 42, num_samples: int = 1, ss_params=None, slat_params=None,
                 decode: bool = True) -> Dict[str, Any]:
        core = self.core
        torch.manual_seed(seed)
        coords = core.sample_sparse_structure(cond, neg_cond, num_samples, **(ss_params or {}))
        out: Dict[str, Any] = {"coords": coords}
        if coords.shape[0] == 0:
            out["slat"], out["mesh"] = None, [{"vertices": np.zeros((0, 3), np.float32),
                                               "faces": np.zeros((0, 3), np.int64)}] * num_samples
            return out
        slat = core.sample_slat(cond, neg_cond, coords, **(slat_params or {}))
        out["slat"] = slat
        if decode and "slat_decoder_mesh" in core.models:
            dec = core.models["slat_decoder_mesh"]
            feats = dec.decode_features(slat)
            out["mesh"] = extract_mesh(feats, dec.resolution * 4)
        return out


class ImageTo3DPipeline(_Generator):
    kind = "image"

    @torch.no_grad()
    def encode_image(self, images) -> torch.Tensor:
        from PIL import Image
        from .data.image import image_to_tensor, preprocess_image
        if isinstance(images, Image.Image):
            images = [images]
        if isinstance(images, (list, tuple)):
            images = torch.stack([image_to_tensor(preprocess_image(im)) for im in images])
        return self.conditioner(images.to(self.device))

    def run(self, image, seed: int = 42, num_samples: int = 1, **kw) -> Dict[str, Any]:
        cond = self.encode_image(image)          # computed before seeding, as the reference does
        return self.run_cond(cond, self.conditioner.negative(cond), seed=seed, num_samples=num_samples, **kw)


class TextTo3DPipeline(_Generator):
    kind = "text"

    def run(self, prompt: Union[str, Sequence[str]], seed: int = 42, num_samples: int = 1, **kw) -> Dict[str, Any]:
        cond = self.conditioner([prompt] if isinstance(prompt, str) else list(prompt))
        return self.run_cond(cond, self.conditioner.negative(cond), seed=seed, num_samples=num_samples, **kw)


def write_pipeline(folder: str, models: Dict[str, Any], conditioner=None, kind: str = "image",
                   slat_normalization: Optional[Dict[str, List[float]]] = None,
                   ss_sampler: Optional[Dict[str, Any]] = None, slat_sampler: Optional[Dict[str, Any]] = None,
                   cond_model_name: Optional[str] = None) -> str:
    """Write ``pipeline.json`` in the released shape. ``models`` maps a role to a model (saved under
    ``ckpts/<role>``) or to a path string (a checkpoint stem, relative to ``folder`` or absolute /
    ``owner/repo/...``). ``conditioner`` is saved under ``cond_model/`` unless ``cond_model_name``
    names a released one (``dinov2_vitl14_reg``, ``openai/clip-vit-large-patch14``)."""
    from .checkpoint import save_pretrained
    os.makedirs(os.path.join(folder, "ckpts"), exist_ok=True)
    refs = {}
    for role, m in models.items():
        if isinstance(m, str):
            refs[role] = os.path.relpath(m, folder) if os.path.isabs(m) else m
        else:
            save_pretrained(m, os.path.join(folder, "ckpts", role))
            refs[role] = f"ckpts/{role}"
    default = {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
               "params": {"steps": 25, "cfg_strength": 7.5 if kind == "text" else 3.0, "cfg_interval": [0.5, 1.0],
                          "rescale_t": 3.0}}
    ss_default = json.loads(json.dumps(default))
    ss_default["params"]["cfg_strength"] = 7.5
    args = {"models": refs, "sparse_structure_sampler": ss_sampler or ss_default,
            "slat_sampler": slat_sampler or default}
    if slat_normalization is not None:
        args["slat_normalization"] = slat_normalization
    key = "image_cond_model" if kind == "image" else "text_cond_model"
    if cond_model_name:
        args[key] = cond_model_name
    elif conditioner is not None:
        conditioner.save_pretrained(os.path.join(folder, "cond_model"))
        args[key] = "cond_model"
    name = "TrellisImageTo3DPipeline" if kind == "image" else "TrellisTextTo3DPipeline"
    with open(os.path.join(folder, "pipeline.json"), "w") as f:
        json.dump({"name": name, "args": args}, f, indent=4)
    return folder
