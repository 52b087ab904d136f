"""A Blender-free stand-in for the render stage (tests only): the normalized mesh becomes
`renders/<sha>/mesh.ply`, plus seeded noise PNGs and transforms.json with the real feature cameras."""

from __future__ import annotations

import json
from dataclasses import dataclass

from catalogs import layout
from catalogs.stage import AssetTask, Resources, Stage, StageContext, StageResult
from render import cameras
from tests.encode.synth import image


class FakeRenderStage(Stage):
    name = "render"
    upstream = ("normalize",)
    resources = Resources(num_cpus=0.5)

    @dataclass(frozen=True)
    class Params:
        num_views: int = 4
        resolution: int = 64

    def run(self, task: AssetTask, ctx: StageContext) -> StageResult:
        d = layout.renders(task.sha256)
        mesh = ctx.store.read_bytes(ctx.store.rel(task.input("normalize").uri))
        seed = cameras.asset_seed(task.sha256, self.name, self.params_dict())
        plan = cameras.feature_plan(self.params.num_views, seed=seed)
        n = ctx.store.write_bytes(f"{d}/mesh.ply", mesh)
        for i in range(self.params.num_views):
            n += ctx.store.write_bytes(f"{d}/{cameras.view_name(i)}", image(i, self.params.resolution, seed % 10_000))
        tj = cameras.transforms_dict([(cameras.view_name(i), v.fov, v.c2w) for i, v in enumerate(plan.views)], 1.0,
                                     [0.0, 0.0, 0.0])
        n += ctx.store.write_bytes(f"{d}/transforms.json", json.dumps(tj, indent=4).encode())
        return StageResult(uri=ctx.store.uri(d), bytes=n, metrics={"n_views": self.params.num_views})
