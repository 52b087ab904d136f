"""Aesthetic score: CLIP ViT-L/14 image embeddings + the LAION "improved aesthetic predictor" MLP.

Per view: composite the RGBA render on `background`, resize (bicubic, shorter side) to the CLIP input
`resolution`, centre-crop, normalise with CLIP's mean/std, take `CLIPModel.get_image_features`
(transformers 5.x returns an output object: the projected embedding is `.pooler_output`),
L2-normalise, and apply the MLP:

    Linear(768,1024) -> Dropout(0.2) -> Linear(1024,128) -> Dropout(0.2) -> Linear(128,64)
    -> Dropout(0.1) -> Linear(64,16) -> Linear(16,1)        (keys layers.0/2/4/6/7, no activations)

loaded by its own key names from `sac+logos+ava1-l14-linearMSE.pth`. The asset's score is the mean
over `n_views` renders chosen evenly from `renders/<sha>/NNN.png` (indices round(k*N/n_views)).
The recipe (views rule, background, resolution, preprocessing, both models' weight hashes) is
recorded in the `models` table and its id in every record, so any score can be reproduced. The
published score of the source listing stays in `assets.aesthetic_score`; this stage's score is the
artifact metric `score`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from catalogs.layout import check_name, check_sha
from catalogs.stage import (
    AssetTask,
    CorruptFile,
    MissingUpstream,
    ModelConfigMismatch,
    Resources,
    Stage,
    StageContext,
    StageResult,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
MLP_KEYS = ("layers.0", "layers.2", "layers.4", "layers.6", "layers.7")


def _gpu_visible() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return False
    return shutil.which("nvidia-smi") is not None


# -- the MLP head ----------------------------------------------------------------------------------
def build_mlp(in_dim: int = 768):
    import torch.nn as nn

    class AestheticMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(
                nn.Linear(in_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

        def forward(self, x):
            return self.layers(x)

    return AestheticMLP()


def load_mlp(path: str | os.PathLike):
    """The MLP with weights from `path`, matched strictly by the checkpoint's own key names."""
    import torch

    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    expected = {f"{k}.{p}" for k in MLP_KEYS for p in ("weight", "bias")}
    if set(state) != expected:
        raise ModelConfigMismatch(f"aesthetic MLP keys differ: missing {sorted(expected - set(state))}, "
                                  f"unexpected {sorted(set(state) - expected)}")
    mlp = build_mlp(int(state["layers.0.weight"].shape[1]))
    mlp.load_state_dict(state, strict=True)
    return mlp.eval()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


def clip_folder(clip_model: str) -> Path:
    """A local folder of the CLIP model: the path itself, or the hub snapshot of a repo id."""
    p = Path(clip_model).expanduser()
    if p.is_dir():
        return p
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(clip_model, allow_patterns=["*.json", "*.safetensors", "*.txt"]))


def clip_weights_sha256(folder: Path) -> str:
    """sha256 over the weight files of a model folder (name + content hash, sorted)."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not files:
        raise ModelConfigMismatch(f"no weight files in {folder}")
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0" + file_sha256(p).encode() + b"\n")
    return h.hexdigest()


# -- views and preprocessing ------------------------------------------------------------------------
def pick_views(names: Sequence[str], n_views: int) -> list[str]:
    """`n_views` of the sorted view files, evenly spaced: index round(k * N / n_views)."""
    names = sorted(names)
    if len(names) < n_views:
        raise MissingUpstream(f"{len(names)} rendered views, {n_views} needed")
    return [names[int(round(k * len(names) / n_views)) % len(names)] for k in range(n_views)]


def preprocess(img: Image.Image, resolution: int, background: Sequence[int]) -> np.ndarray:
    """RGBA render -> CLIP input (3, res, res) float32: composite, bicubic resize, centre crop, normalise."""
    img = img.convert("RGBA")
    bg = Image.new("RGBA", img.size, tuple(int(c) for c in background) + (255,))
    rgb = Image.alpha_composite(bg, img).convert("RGB")
    w, h = rgb.size
    s = resolution / min(w, h)
    rgb = rgb.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.BICUBIC)
    w, h = rgb.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    rgb = rgb.crop((left, top, left + resolution, top + resolution))
    x = np.asarray(rgb, dtype=np.float32) / 255.0
    x = (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return x.transpose(2, 0, 1).copy()


# -- the scorer ------------------------------------------------------------------------------------
class AestheticScorer:
    """CLIP + MLP loaded once; `score(images)` -> (per-image scores, normalised embeddings)."""

    def __init__(self, clip_model: str, mlp_path: str, device: str | None = None, resolution: int = 0,
                 background: Sequence[int] = (255, 255, 255), precision: str = "fp32") -> None:
        import torch
        from transformers import CLIPModel

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        folder = clip_folder(clip_model)
        self.clip = CLIPModel.from_pretrained(str(folder)).eval().to(self.device)
        self.mlp = load_mlp(mlp_path).to(self.device)
        proj = int(self.clip.config.projection_dim)
        if self.mlp.layers[0].in_features != proj:
            raise ModelConfigMismatch(f"MLP expects {self.mlp.layers[0].in_features}-d embeddings, CLIP gives {proj}")
        self.resolution = int(resolution or self.clip.config.vision_config.image_size)
        self.background = tuple(int(c) for c in background)
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
        self.precision = precision
        self.clip_sha256 = clip_weights_sha256(folder)
        self.mlp_sha256 = file_sha256(mlp_path)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        import torch

        dev = "cuda" if str(self.device).startswith("cuda") else "cpu"
        with torch.inference_mode(), torch.autocast(dev, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            x = torch.from_numpy(batch).to(self.device)
            out = self.clip.get_image_features(pixel_values=x)
            emb = out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5.x: an output object
            emb = torch.nn.functional.normalize(emb.float(), dim=-1)
        return emb.cpu().numpy()

    def head(self, emb: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.mlp(torch.from_numpy(emb).to(self.device)).float().cpu().numpy()[:, 0]

    def score(self, images: Sequence[Image.Image], batch: int = 64, pool=None) -> tuple[np.ndarray, np.ndarray]:
        """Scores and embeddings of `images`; `pool` (an executor) preprocesses in parallel."""
        prep = lambda im: preprocess(im, self.resolution, self.background)  # noqa: E731
        embs = []
        for i in range(0, len(images), batch):
            chunk = images[i:i + batch]
            x = np.stack(list(pool.map(prep, chunk)) if pool is not None else [prep(im) for im in chunk])
            embs.append(self.embed(x))
        emb = np.concatenate(embs) if embs else np.zeros((0, self.clip.config.projection_dim), np.float32)
        return self.head(emb), emb


# -- the stage ---------------------------------------------------------------------------------------
class AestheticStage(Stage):
    """Config: `clip_model` (local folder or hub id, default openai/clip-vit-large-patch14),
    `mlp_weights` (path of sac+logos+ava1-l14-linearMSE.pth; required), `device`, `decode_threads`
    (threads reading/decoding/preprocessing views, default min(16, CPUs)), `image_batch`
    (views per forward, default 64), `variant` (default laion_aesthetic_v2_vitl14), `num_gpus`
    (default 1 when a GPU is visible), `pretrained` (False for the tiny seeded test models)."""

    name = "aesthetic"
    version = "1"
    upstream = ("render",)
    batch_size = 32
    timeout_s = 1800.0
    resources = Resources(num_cpus=1.0)

    @dataclass(frozen=True)
    class Params:
        n_views: int = 4
        background: tuple[int, int, int] = (255, 255, 255)
        resolution: int = 0
        """CLIP input size; 0 = the model's own (224 for ViT-L/14)."""
        precision: str = "fp32"
        """CLIP forward in fp32, or under bf16 autocast (faster on GPUs; scores differ slightly)."""

    def __init__(self, params: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None, **kw: Any):
        params = dict(params or {})
        if "background" in params:
            params["background"] = tuple(int(c) for c in params["background"])
        super().__init__(params, config, **kw)
        gpus = self.config.get("num_gpus")
        if gpus is None:
            gpus = 1.0 if _gpu_visible() else 0.0
        if gpus:
            self.resources = Resources(num_cpus=1.0, num_gpus=float(gpus))
        self._scorer: AestheticScorer | None = None
        self._hashes: tuple[str, str] | None = None

    @property
    def variant(self) -> str:
        return check_name(self.config.get("variant", "laion_aesthetic_v2_vitl14"))

    def _paths(self) -> tuple[str, str]:
        mlp = self.config.get("mlp_weights")
        if not mlp:
            raise ModelConfigMismatch("aesthetic stage needs config.mlp_weights (path of sac+logos+ava1-l14-linearMSE.pth)")
        return str(self.config.get("clip_model", DEFAULT_CLIP)), str(mlp)

    def model_hashes(self) -> tuple[str, str]:
        if self._hashes is None:
            clip, mlp = self._paths()
            self._hashes = (clip_weights_sha256(clip_folder(clip)), file_sha256(mlp))
        return self._hashes

    def weights_hash(self) -> str | None:
        c, m = self.model_hashes()
        return hashlib.sha256(f"clip:{c};mlp:{m}".encode()).hexdigest()

    def recipe(self) -> dict[str, Any]:
        clip, mlp = self._paths()
        c, m = self.model_hashes()
        p = asdict(self.params)
        return {
            "views": {"n_views": p["n_views"], "rule": "sorted renders/<sha>/NNN.png, index round(k*N/n_views)",
                      "aggregate": "mean of per-view scores"},
            "background": list(p["background"]),
            "resolution": p["resolution"] or "model image_size",
            "preprocess": {"composite": "alpha over background", "resize": "bicubic shorter side", "crop": "centre",
                           "mean": CLIP_MEAN, "std": CLIP_STD},
            "embedding": "CLIPModel.get_image_features().pooler_output, L2-normalised",
            "precision": p["precision"],
            "clip_model": clip, "clip_weights_sha256": c,
            "mlp": Path(mlp).name, "mlp_weights_sha256": m, "mlp_keys": list(MLP_KEYS),
            "stage_version": self.version,
        }

    def recipe_id(self) -> str:
        return hashlib.sha256(json.dumps(self.recipe(), sort_keys=True, default=str).encode()).hexdigest()[:16]

    def model_info(self, pretrained: bool | None = None, note: str | None = None) -> dict[str, Any]:
        """The recipe and weights for the catalog's `models` table (the driver records it)."""
        if pretrained is None:
            pretrained = bool(self.config.get("pretrained", True))
        return {"weights_sha256": self.weights_hash(), "config": {**self.recipe(), "recipe_id": self.recipe_id()},
                "source": self._paths()[0], "pretrained": pretrained,
                "note": note or (None if pretrained else "not pretrained: tiny seeded test models")}

    def register(self, catalog, pretrained: bool | None = None, note: str | None = None) -> str:
        """Record the recipe and weights in the catalog's `models` table; returns the weights hash."""
        m = self.model_info(pretrained, note)
        catalog.register_model(self.name, self.variant, m["weights_sha256"], m["config"], m["source"], m["pretrained"], m["note"])
        return m["weights_sha256"]

    def setup(self) -> None:
        if self._scorer is None:
            clip, mlp = self._paths()
            self._scorer = AestheticScorer(clip, mlp, device=self.config.get("device"),
                                           resolution=self.params.resolution, background=self.params.background,
                                           precision=self.params.precision)
            self._hashes = (self._scorer.clip_sha256, self._scorer.mlp_sha256)

    def _pool(self):
        """Threads that read, decode and preprocess views (PIL and numpy release the GIL)."""
        n = int(self.config.get("decode_threads", min(16, os.cpu_count() or 1)))
        if n <= 1:
            return None
        if getattr(self, "_executor", None) is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(max_workers=n, thread_name_prefix="aesthetic-decode")
        return self._executor

    def out_rel(self, sha256: str) -> str:
        return f"aesthetic/{self.variant}/{check_sha(sha256)}.npz"

    def _views(self, task: AssetTask, ctx: StageContext) -> tuple[list[str], list[Image.Image]]:
        rel = ctx.store.rel(task.input("render").uri)
        names = [posixpath_basename(n) for n in ctx.store.listdir(rel)]
        pngs = [n for n in names if n.endswith(".png") and n[:-4].isdigit()]
        chosen = pick_views(pngs, self.params.n_views)
        imgs = []
        for n in chosen:
            try:
                im = Image.open(io.BytesIO(ctx.store.read_bytes(f"{rel}/{n}")))
                im.load()
            except Exception as exc:  # noqa: BLE001
                raise CorruptFile(f"render {rel}/{n} is not a readable image: {exc}") from None
            imgs.append(im)
        return chosen, imgs

    def run(self, task: AssetTask, ctx: StageContext) -> StageResult:
        out = self.run_batch([task], ctx)[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def run_batch(self, tasks: Sequence[AssetTask], ctx: StageContext) -> list[StageResult | BaseException]:
        self.setup()
        assert self._scorer is not None
        results: list[StageResult | BaseException | None] = [None] * len(tasks)
        spans: list[tuple[int, list[str], int, int]] = []
        images: list[Image.Image] = []
        pool = self._pool()

        def load(t):
            try:
                return self._views(t, ctx)
            except Exception as exc:  # noqa: BLE001 - recorded per asset
                return exc

        loaded = list(pool.map(load, tasks)) if pool is not None else [load(t) for t in tasks]
        for i, got in enumerate(loaded):
            if isinstance(got, BaseException):
                results[i] = got
                continue
            names, imgs = got
            spans.append((i, names, len(images), len(imgs)))
            images.extend(imgs)
        if images:
            scores, embs = self._scorer.score(images, batch=int(self.config.get("image_batch", 64)), pool=pool)
        rid = self.recipe_id()
        for i, names, start, n in spans:
            t = tasks[i]
            try:
                s, e = scores[start:start + n], embs[start:start + n]
                if not np.all(np.isfinite(s)):
                    from catalogs.stage import NonFinite

                    raise NonFinite(f"non-finite aesthetic score for {t.sha256[:12]}")
                buf = io.BytesIO()
                np.savez(buf, embeddings=e.astype(np.float16), scores=s.astype(np.float32), views=np.asarray(names))
                rel = self.out_rel(t.sha256)
                nbytes = ctx.store.write_bytes(rel, buf.getvalue())
                results[i] = StageResult(uri=ctx.store.uri(rel), bytes=nbytes, metrics={
                    "score": float(np.mean(s)), "view_scores": [round(float(v), 6) for v in s], "views": names,
                    "recipe_id": rid, "variant": self.variant})
            except Exception as exc:  # noqa: BLE001
                results[i] = exc
        return results  # type: ignore[return-value]


def posixpath_basename(p: str) -> str:
    return p.rstrip("/").rsplit("/", 1)[-1]


def load_embedding(store, uri: str) -> np.ndarray:
    """The asset-level embedding (mean of normalised view embeddings, renormalised) of an artifact."""
    with np.load(io.BytesIO(store.read_bytes(store.rel(uri)))) as z:
        e = z["embeddings"].astype(np.float32).mean(axis=0)
    n = np.linalg.norm(e)
    return e / n if n > 0 else e


__all__ = ["AestheticStage", "AestheticScorer", "build_mlp", "load_mlp", "preprocess", "pick_views", "load_embedding",
           "CLIP_MEAN", "CLIP_STD", "MLP_KEYS"]
