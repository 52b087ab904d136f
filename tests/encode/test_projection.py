"""Projection correctness: known answers for the uv / grid-sampling conventions of DATA_FORMATS §5."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from encode.features import FeatureStage
from encode.projection import (
    cameras_from_transforms, normalized_intrinsics, opencv_extrinsics, project_mean, project_uv, sample_tokens,
    voxel_indices,
)
from encode.voxelize import voxel_centres
from render import cameras
from tests.encode import synth
from tests.encode.conftest import npz

G = 37


def test_token_centre_is_at_c_plus_half_over_37():
    for r, c in [(0, 0), (5, 30), (36, 36), (18, 18)]:
        tok = torch.zeros(1, 1, G, G)
        tok[0, 0, r, c] = 1.0
        uv = torch.tensor([[[(c + 0.5) / G, (r + 0.5) / G],          # the centre: exactly the token
                            [(c + 1.0) / G, (r + 0.5) / G],          # half a token right: half
                            [(c + 0.5) / G, (r + 1.0) / G]]])        # half a token down: half
        out = sample_tokens(tok, uv)[0, 0]
        assert out[0].item() == pytest.approx(1.0, abs=1e-6)
        assert out[1].item() == pytest.approx(0.5, abs=1e-6)
        assert out[2].item() == pytest.approx(0.5, abs=1e-6)


def test_outside_the_image_samples_zero_and_edges_are_minus_one_plus_one():
    tok = torch.ones(1, 1, G, G)
    uv = torch.tensor([[[-0.2, 0.5], [0.5, 1.3], [0.0, 0.5], [0.5 / G, 0.5]]])
    out = sample_tokens(tok, uv)[0, 0]
    assert out[0] == 0 and out[1] == 0
    assert out[2].item() == pytest.approx(0.5)  # the image edge is the outer edge of the border token
    assert out[3].item() == pytest.approx(1.0)


def test_opencv_conversion_top_left_origin_and_axes():
    # camera at +X looking at the origin (yaw 0, pitch 0): world +Y is image right, world +Z is image up
    c2w = cameras.c2w_look_at_origin(cameras.camera_position(0.0, 0.0, 2.0))
    w2c = opencv_extrinsics(c2w)
    K = normalized_intrinsics(math.radians(40))
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 0.1]])
    uv = project_uv(pts, torch.from_numpy(w2c[None]), torch.from_numpy(K[None]))[0]
    assert uv[0].tolist() == pytest.approx([0.5, 0.5], abs=1e-6)
    assert uv[1, 0] > 0.5 and uv[1, 1] == pytest.approx(0.5, abs=1e-6)
    assert uv[2, 1] < 0.5 and uv[2, 0] == pytest.approx(0.5, abs=1e-6)
    f = 0.5 / math.tan(math.radians(20))
    assert K[0, 0] == pytest.approx(1.3737387, abs=1e-6) and f == pytest.approx(K[0, 0])
    assert uv[1, 0].item() == pytest.approx(0.5 + f * 0.1 / 2.0, abs=1e-6)


def test_uv_matches_the_render_module_projection():
    plan = cameras.feature_plan(12, seed=3)
    tj = cameras.transforms_dict([(cameras.view_name(i), v.fov, v.c2w) for i, v in enumerate(plan.views)], 1.0, [0, 0, 0])
    _, w2c, K = cameras_from_transforms(tj)
    pts = voxel_centres(synth.shell_indices(0.3))
    uv = project_uv(torch.from_numpy(pts), torch.from_numpy(w2c), torch.from_numpy(K)).numpy()
    for v, view in enumerate(plan.views):
        ref, z = cameras.project(pts, view.c2w, view.fov)
        assert (z > 0).all()
        np.testing.assert_allclose(uv[v], ref, atol=2e-6)


def position_map(u_scale: torch.Tensor | None = None) -> torch.Tensor:
    """(V, 3, 37, 37): channel 0 = u of the token centre, 1 = v, 2 = u times a per-view factor."""
    c = (torch.arange(G, dtype=torch.float32) + 0.5) / G
    u = c[None, :].expand(G, G)
    v = c[:, None].expand(G, G)
    s = torch.ones(1) if u_scale is None else u_scale
    return torch.stack([u.expand(len(s), G, G), v.expand(len(s), G, G), s[:, None, None] * u], 1)


def test_mean_of_a_position_map_is_the_mean_projected_position():
    plan = cameras.feature_plan(10, seed=1)
    pts = voxel_centres(synth.shell_indices(0.4))
    tj = cameras.transforms_dict([(cameras.view_name(i), v.fov, v.c2w) for i, v in enumerate(plan.views)], 1.0, [0, 0, 0])
    _, w2c, K = cameras_from_transforms(tj)
    uv = project_uv(torch.from_numpy(pts), torch.from_numpy(w2c), torch.from_numpy(K))
    scale = torch.arange(1, 11, dtype=torch.float32)
    out = project_mean(position_map(scale), uv).numpy()
    ref = np.stack([cameras.project(pts, v.c2w, v.fov)[0] for v in plan.views])  # (V, N, 2)
    # inside [0.5/37, 36.5/37] bilinear interpolation of a linear map is exact
    assert ref.min() > 0.5 / G and ref.max() < 1 - 0.5 / G
    np.testing.assert_allclose(out[:, 0], ref[..., 0].mean(0), atol=2e-5)
    np.testing.assert_allclose(out[:, 1], ref[..., 1].mean(0), atol=2e-5)
    np.testing.assert_allclose(out[:, 2], (scale.numpy()[:, None] * ref[..., 0]).mean(0), atol=1e-4)


def test_out_of_frame_views_count_as_zeros_in_the_mean():
    p = np.array([[0.0, 0.0, 0.0]], np.float32)
    c2w_a = cameras.c2w_look_at_origin([2.0, 0.0, 0.0])
    c2w_b = cameras.c2w_look_at_origin([2.0, 0.0, 0.0])
    c2w_b[:3, 3] += c2w_b[:3, 0] * 5.0  # slid sideways: the origin is out of frame
    w2c = opencv_extrinsics(np.stack([c2w_a, c2w_b]))
    K = normalized_intrinsics(np.full(2, math.radians(40)))
    uv = project_uv(torch.from_numpy(p), torch.from_numpy(w2c), torch.from_numpy(K))
    assert not (0 <= uv[1, 0, 0] <= 1)
    out = project_mean(torch.ones(2, 1, G, G), uv)
    assert out.item() == pytest.approx(0.5)


class PositionFeatures(FeatureStage):
    """The real stage (loading, batching across assets, projection, averaging, npz) with a token map
    that encodes the token-centre position, scaled per view by the mean of the model input's red plane."""

    def load_model(self):
        return object()

    def forward(self, x):
        return position_map(x[:, 0].mean((1, 2)))


def test_stage_average_of_position_map_equals_projected_positions(ctx):
    tasks = [synth.write_asset(ctx.store, synth.sha(i), n_views=5 + i, seed=i, radius=0.2 + 0.1 * i) for i in range(3)]
    stage = PositionFeatures({"model": "tiny:dinov2", "name": "position_map"}, {"batch_views": 4, "loader_threads": 2})
    res = stage.run_batch(tasks, ctx)
    from encode.features import load_view, preprocess

    for i, (t, r) in enumerate(zip(tasks, res)):
        assert not isinstance(r, BaseException), r
        z = npz(ctx, r.uri)
        assert z["patchtokens"].dtype == np.float16 and z["indices"].dtype == np.uint8
        plan = cameras.feature_plan(5 + i, seed=i)
        pts = voxel_centres(synth.shell_indices(0.2 + 0.1 * i, seed=i))
        np.testing.assert_array_equal(z["indices"], voxel_indices(pts))  # the ply's row order, floor((p+.5)*64)
        s = np.array([preprocess(torch.from_numpy(load_view(synth.image(v, 64, i), 518)[None]))[0, 0].mean().item()
                      for v in range(5 + i)])
        uvs = np.stack([cameras.project(pts, v.c2w, v.fov)[0] for v in plan.views])
        ref = np.stack([uvs[..., 0].mean(0), uvs[..., 1].mean(0), (s[:, None] * uvs[..., 0]).mean(0)], 1)
        np.testing.assert_allclose(z["patchtokens"].astype(np.float32), ref, rtol=2e-3, atol=2e-4)
