"""DDP over NCCL for the SLat flow trainer: N GPUs (one process each) against one process that takes the
N-times batch, on the same global batches. Two phases, each measured side by side in one run:

- parity (fp32, TF32 off): the per-step losses of DDP and of the single process must agree (the CPU
  test with gloo asserts rtol 2e-4 at tiny scale; here at full model size);
- speed (bf16 autocast): median step time of DDP at batch B per GPU, of one GPU at batch B, and of one
  GPU at batch N*B, so the scaling is a ratio of this run's numbers.

Model: the released ``slat_flow_img_dit_L_64l8p2`` arguments, random init (NOT pretrained), conditioned
by a seeded 1024-wide DINOv2 (NOT pretrained) on random 56-px images; data: in-memory shell voxel sets
(no catalog, so this runs on a GPU machine without duckdb/pyarrow).

    python3 -m bench.ddp_gpu            # uses min(2, visible GPUs); with one GPU only the 1-GPU rows run
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp

IMAGE = 56


class ShellSLat(torch.utils.data.Dataset):
    """SLat-like samples (coords (N, 3), feats (N, 8), cond image) from seeded shell voxel sets."""

    def __init__(self, n: int, voxels: int, seed: int = 0) -> None:
        from bench.training_gpu import _shells

        rng = np.random.default_rng(seed)
        self.samples = []
        for i in range(n):
            c = _shells(rng, voxels)
            c = c[rng.permutation(len(c))[:voxels]]
            self.samples.append({"coords": torch.from_numpy(c.astype(np.int32)),
                                 "feats": torch.from_numpy(rng.normal(size=(len(c), 8)).astype(np.float32)),
                                 "cond": torch.from_numpy(rng.uniform(size=(3, IMAGE, IMAGE)).astype(np.float32))})

    @property
    def loads(self) -> list[int]:
        return [len(s["coords"]) for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.samples[int(index)], "index": int(index)}


def _steps(world: int, rank: int, port: int, a: argparse.Namespace, batch: int, precision: str) -> dict[str, Any]:
    """Train ``a.steps`` steps at ``batch`` per rank; returns losses, step times and peak memory (rank 0)."""
    import torch.distributed as dist

    from trellis_core.generate import DinoV2Conditioner
    from trellis_core.models import TINY_CONFIGS, SLatFlowModel, released_config
    from trellis_core.train import SLatFlowTrainer, TrainConfig, initialize_weights

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision != "fp32"
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    if cuda:
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        if cuda:
            dist.init_process_group("nccl", rank=rank, world_size=world, device_id=device)
        else:  # the same code path on CPU (a smoke run of this script without a GPU)
            dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # "tiny": the registry's tiny SLat flow, for a CPU smoke run of this script
        args = dict(TINY_CONFIGS["SLatFlowModel"]) if a.model == "tiny" else released_config(a.model)["args"]
        args["use_fp16"] = False
        torch.manual_seed(0)
        model = initialize_weights(SLatFlowModel(**args))
        heads = max(1, args["cond_channels"] // 64)
        cond = DinoV2Conditioner.tiny(seed=0, hidden_size=args["cond_channels"], num_heads=heads, image_size=IMAGE)
        data = ShellSLat(a.samples, a.voxels)
        cfg = TrainConfig(out_dir=tempfile.mkdtemp(prefix="ddp-bench-"), batch_size=batch, max_steps=a.steps,
                          lr=1e-4, ema_rates=(0.9999,), log_every=0, precision=precision, p_uncond=0.1)
        tr = SLatFlowTrainer(model, data, cfg, cond_model=cond, device=device)
        losses, times, it = [], [], tr.batches()
        for _ in range(a.steps):
            raw = next(it)
            sync()
            t0 = time.perf_counter()
            losses.append(tr.train_step(raw)["loss"])
            sync()
            times.append(time.perf_counter() - t0)
            tr.step += 1
        warm = times[2:] if len(times) > 3 else times
        return {"world": world, "batch_per_gpu": batch, "global_batch": batch * world, "precision": precision,
                "losses": losses, "step_s": times, "step_s_median": statistics.median(warm),
                "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2) if cuda else None}
    finally:
        if world > 1:
            dist.destroy_process_group()


def _rank_main(rank: int, world: int, port: int, a: argparse.Namespace, batch: int, precision: str,
               out: str) -> None:
    res = _steps(world, rank, port, a, batch, precision)
    if rank == 0:
        torch.save(res, out)


def _ddp(world: int, a: argparse.Namespace, batch: int, precision: str) -> dict[str, Any]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = os.path.join(tempfile.mkdtemp(prefix="ddp-bench-"), "rank0.pt")
    mp.spawn(_rank_main, args=(world, port, a, batch, precision, out), nprocs=world, join=True)
    return torch.load(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=2, help="DDP world size (capped at the visible GPUs)")
    ap.add_argument("--model", default="slat_flow_img_dit_L_64l8p2_fp16", help="released config name, or tiny")
    ap.add_argument("--batch", type=int, default=2, help="samples per GPU")
    ap.add_argument("--voxels", type=int, default=8000, help="voxels per sample")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", default=None, help="result file (default bench/results/ddp_gpu.json)")
    a = ap.parse_args()
    from bench.common import write_result

    # NVLink multicast stays off (the device tool's KINDS.md: it can take a shared host's GPUs down)
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    visible = torch.cuda.device_count()
    world = min(a.gpus, visible) if visible else a.gpus  # no GPU: a gloo smoke run of the same code

    phases: dict[str, Any] = {}
    for phase, precision in (("parity", "fp32"), ("speed", "bf16")):
        rows = {"one_gpu_batch_B": _steps(1, 0, 0, a, a.batch, precision),
                "one_gpu_batch_NB": _steps(1, 0, 0, a, a.batch * a.gpus, precision)}
        if world > 1:
            rows["ddp_batch_B_per_gpu"] = _ddp(world, a, a.batch, precision)
            single, ddp = rows["one_gpu_batch_NB"], rows["ddp_batch_B_per_gpu"]
            rows["max_rel_loss_diff"] = max(abs(x - y) / max(abs(y), 1e-12)
                                            for x, y in zip(ddp["losses"], single["losses"]))
            rows["ddp_vs_one_gpu_same_global_batch"] = single["step_s_median"] / ddp["step_s_median"]
            rows["scaling_samples_per_s_vs_one_gpu_batch_B"] = (
                world * rows["one_gpu_batch_B"]["step_s_median"] / ddp["step_s_median"])
        else:
            rows["ddp_batch_B_per_gpu"] = {"not_run": f"{visible} GPU visible; DDP needs 2 or more"}
        phases[phase] = rows
        print(phase, {k: (v.get("step_s_median") if isinstance(v, dict) else v) for k, v in rows.items()}, flush=True)
    path = write_result("ddp_gpu", path=a.out, figures={
        "command": "python3 -m bench.ddp_gpu",
        "gpu": torch.cuda.get_device_name(0) if visible else "none (CPU smoke run, gloo)", "gpus_visible": visible, "world": world,
        "model": f"{a.model} args, random init (NOT pretrained); tiny seeded DINOv2 conditioner (NOT pretrained)",
        "batch_per_gpu": a.batch, "voxels_per_sample": a.voxels, "steps": a.steps,
        "env": {k: os.environ.get(k) for k in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST")},
        **phases})
    print(path)


if __name__ == "__main__":
    main()
