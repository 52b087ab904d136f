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
recorded in the `models` table and its id in every record, so any score can be reproduced. Models
follow the convention of every model stage (catalogs.modelstage): the params `model` (CLIP) and
`head` (the MLP weights) are locations, replaced in the fingerprint by the weights' hashes; `name` is
the variant; `precision` the arithmetic. `tiny:clip` + `tiny:aesthetic_head` are the tiny seeded pair. The
published score of the source listing stays in `assets.aesthetic_score`; this stage's score is the
artifact metric `score`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from catalogs.layout import check_sha
from catalogs.modelstage import ModelStage
from catalogs.stage import (
    AssetTask,
    CorruptFile,
    MissingUpstream,
    ModelConfigMismatch,
    Resources,
    StageContext,
    StageResult,
)
from trellis_core.locations import FILE, TRANSFORMERS
from trellis_core.models.tiny import TINY_CLIP, TinyKind, register_tiny

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MLP_KEYS = ("layers.0", "layers.2", "layers.4", "layers.6", "layers.7")
MLP_FILE = "sac+logos+ava1-l14-linearMSE.pth"


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


TINY_HEAD_BIAS = 5.0
"""Output bias of the tiny head, so its scores sit in the LAION predictor's 1-10 range like real ones."""


def _write_tiny_head(dest: Path, seed: int, in_dim: int = TINY_CLIP["projection_dim"]) -> Path:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mlp = build_mlp(in_dim)
    with torch.no_grad():
        mlp.layers[-1].bias.fill_(TINY_HEAD_BIAS)
    torch.save(mlp.state_dict(), dest)
    return dest


register_tiny("aesthetic_head", TinyKind("file", "aesthetic_head_tiny", _write_tiny_head,
                                         {"in_dim": TINY_CLIP["projection_dim"], "bias": TINY_HEAD_BIAS}))


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

    def __init__(self, clip_folder: str | os.PathLike, mlp_path: str | os.PathLike, device, resolution: int = 0,
                 background: Sequence[int] = (255, 255, 255), precision: str = "fp32") -> None:
        from transformers import CLIPModel

        self.device = device
        self.clip = CLIPModel.from_pretrained(str(clip_folder)).eval().to(self.device)
        self.mlp = load_mlp(mlp_path).to(self.device)
        proj = int(self.clip.config.projection_dim)
        if self.mlp.layers[0].in_features != proj:
            raise ModelConfigMismatch(f"MLP expects {self.mlp.layers[0].in_features}-d embeddings, CLIP gives {proj}")
        self.resolution = int(resolution or self.clip.config.vision_config.image_size)
        self.background = tuple(int(c) for c in background)
        self.precision = precision

    def embed(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode(), torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16,
                                                    enabled=self.precision == "bf16"):
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
class AestheticStage(ModelStage):
    """Params: `model` (CLIP: a transformers folder, a Hub id or `tiny:clip`), `head` (the MLP weights:
    a file, `<owner>/<repo>[@revision]/<file>` on the Hub or `tiny:aesthetic_head`), `name` (the
    variant), `precision`, and the recipe (`n_views`, `background`, `resolution`).
    Config: `device`, `decode_threads` (threads reading/decoding/preprocessing views, default
    min(16, CPUs)), `image_batch` (views per forward, default 64)."""

    name = "aesthetic"
    version = "1"
    upstream = ("render",)
    batch_size = 32
    timeout_s = 1800.0
    resources = Resources(num_cpus=1.0, num_gpus=1.0)
    models = {"model": TRANSFORMERS, "head": FILE}
    precisions = ("fp32", "bf16")

    @dataclass(frozen=True)
    class Params:
        model: str = "openai/clip-vit-large-patch14"
        head: str = f"camenduru/improved-aesthetic-predictor/{MLP_FILE}"
        name: str = "laion_aesthetic_v2_vitl14"
        precision: str = "fp32"
        """CLIP forward in fp32, or under bf16 autocast (faster on GPUs; scores differ slightly)."""
        n_views: int = 4
        background: tuple[int, int, int] = (255, 255, 255)
        resolution: int = 0
        """CLIP input size; 0 = the model's own (224 for ViT-L/14)."""

    MOVED = {"clip_model": "model", "mlp_weights": "head", "variant": "name"}
    """Config keys of an older layout and the params that hold them now."""

    def __init__(self, params: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None, **kw: Any):
        params = dict(params or {})
        if "background" in params:
            params["background"] = tuple(int(c) for c in params["background"])
        moved = sorted(set(config or {}) & set(self.MOVED))
        if moved:
            raise ValueError(f"stage aesthetic: config {moved} are params now: "
                             + ", ".join(f"{k} -> params.{self.MOVED[k]}" for k in moved))
        super().__init__(params, config, **kw)

    def recipe(self) -> dict[str, Any]:
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
            "clip_model": self.model_ref("model").source, "clip_weights_sha256": self.model_ref("model").weights_sha256(),
            "mlp": self.model_ref("head").source, "mlp_weights_sha256": self.model_ref("head").weights_sha256(),
            "mlp_keys": list(MLP_KEYS), "stage_version": self.version,
        }

    def recipe_id(self) -> str:
        return hashlib.sha256(json.dumps(self.recipe(), sort_keys=True, default=str).encode()).hexdigest()[:16]

    def model_info(self) -> dict[str, Any]:
        """The `models` row: both weights, and the recipe (with its id) as the config."""
        return {**super().model_info(), "config": {**self.recipe(), "recipe_id": self.recipe_id()}}

    def load_model(self) -> AestheticScorer:
        return AestheticScorer(self.model_ref("model").path, self.model_ref("head").path, self.device,
                               resolution=self.params.resolution, background=self.params.background,
                               precision=self.params.precision)

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
        failed = self.failed_setup(list(tasks))
        if failed:
            return failed
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
            scores, embs = self.model.score(images, batch=int(self.config.get("image_batch", 64)), pool=pool)
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
