"""A Mitsuba 3 path tracer with Cycles' semantics for the reference scene (`cycles_path`).

Mitsuba's own `path` integrator differs from the reference Cycles set-up in ways that show up in
parity: its alpha is "the camera ray hit something" (so an alpha-blended surface is opaque), null
(transparent) interactions count as bounces, shadow rays are blocked by transparent surfaces, and
one depth limit stands for Cycles' separate per-kind bounce limits. This integrator keeps Mitsuba's
BSDFs, emitters and samplers and changes only the path logic:

- **Film transparency.** Emission reaches the film only after the path has scattered once, so the
  world and the lights are invisible to camera rays (Cycles: `film_transparent`, lights not visible
  to the camera), while emissive surfaces of the asset stay visible. Surfaces whose BSDF is only a
  `null` (the light quads) are passed through without counting as a hit.
- **Stochastic transparency.** A `mask` BSDF picks its null component with probability 1 - alpha;
  the ray then continues unchanged (counted against `transparent_bounces`). A sample's alpha is 1
  when its path ends on an opaque scattering event, so the pixel's alpha is 1 - Π(1 - alpha_i),
  as Cycles accumulates it; the colour is premultiplied.
- **Transparent shadows.** Shadow rays pass through `mask` surfaces, attenuated by their null
  transmission (1 - alpha), and through the light quads, like Cycles' transparent shadows.
- **Bounce limits per kind** (Cycles' `diffuse_bounces`, `glossy_bounces`,
  `transparent_max_bounces`): next-event estimation happens at every scattering vertex; a BSDF
  continuation of a kind whose limit is reached is still traced, for the emission it finds (the
  other half of the MIS pair), and ends the path there.
- **Indirect clamp** (Cycles' `sample_clamp_indirect`): contributions after the first bounce are
  clamped to `clamp_indirect` (max channel), direct ones are not.

Light sampling takes one sample of every light at every opaque vertex (MIS with BSDF sampling,
power heuristic); lights with sampling weight 0 are left to BSDF sampling alone.
"""

from __future__ import annotations

import drjit as dr
import mitsuba as mi

NAME = "cycles_path"


def _mis(a: mi.Float, b: mi.Float) -> mi.Float:
    a2, b2 = a * a, b * b
    w = a2 / (a2 + b2)
    return dr.select(dr.isfinite(w), w, 0.0)


def _clamp_max(value: mi.Spectrum, limit: float, where: mi.Bool) -> mi.Spectrum:
    m = dr.max(value)
    scale = dr.select(where & (m > limit), limit / dr.maximum(m, 1e-20), 1.0)
    return value * scale


class CyclesPathIntegrator(mi.SamplingIntegrator):
    """See the module docstring. Properties: diffuse_bounces, glossy_bounces, transparent_bounces,
    clamp_indirect (0 = off), shadow_steps (surfaces a shadow ray may pass), aovs (albedo+normal
    for the denoiser)."""

    def __init__(self, props: mi.Properties) -> None:
        super().__init__(props)
        self.diffuse_bounces = int(props.get("diffuse_bounces", 1))
        self.glossy_bounces = int(props.get("glossy_bounces", 1))
        self.transparent_bounces = int(props.get("transparent_bounces", 3))
        self.clamp_indirect = float(props.get("clamp_indirect", 10.0))
        self.shadow_steps = int(props.get("shadow_steps", 4))
        self.with_aovs = bool(props.get("aovs", False))
        # each iteration is one surface: scatterings, transparent passes and light quads
        self.max_iterations = self.diffuse_bounces + self.glossy_bounces + self.transparent_bounces + 4

    def aov_names(self) -> list[str]:
        if not self.with_aovs:
            return []
        return ["albedo.R", "albedo.G", "albedo.B", "nn.X", "nn.Y", "nn.Z"]

    @staticmethod
    def _sampled_emitters(scene: mi.Scene) -> list:
        """Every emitter with a positive sampling weight: each is sampled once per vertex (the scene
        has four lights at most), which removes the light-selection noise of one sample per vertex."""
        return [e for e in scene.emitters() if e.sampling_weight() > 0.0]

    @staticmethod
    def _light_pdf(ds: mi.DirectionSample3f, ref: mi.SurfaceInteraction3f, active: mi.Bool) -> mi.Float:
        """Solid-angle density with which light sampling finds `ds` (0 for unsampled emitters)."""
        sampled = ds.emitter.sampling_weight() > 0.0
        return dr.select(sampled, ds.emitter.pdf_direction(ref, ds, active & sampled), 0.0)

    @dr.syntax
    def _transmittance(self, scene: mi.Scene, si: mi.SurfaceInteraction3f, ds: mi.DirectionSample3f,
                       active: mi.Bool) -> mi.Spectrum:
        """Visibility of an emitter sample through transparent surfaces and light quads."""
        is_infinite = mi.has_flag(ds.emitter.flags(), mi.EmitterFlags.Infinite)
        ray = si.spawn_ray_to(ds.p)
        ray[is_infinite] = si.spawn_ray(ds.d)
        tr = mi.Spectrum(1.0)
        steps = mi.UInt32(0)
        live = mi.Bool(active)
        while dr.hint(live, max_iterations=self.shadow_steps + 1, label="cycles_path shadow"):
            hit = scene.ray_intersect(ray, mi.RayFlags.All, coherent=False, active=live)
            blocked = live & hit.is_valid()
            t_null = hit.bsdf(ray).eval_null_transmission(hit, blocked)
            tr[blocked] = tr * t_null
            tr[blocked & (steps >= self.shadow_steps)] = 0.0
            live &= blocked & (dr.max(tr) > 0.0) & (steps < self.shadow_steps)
            ray[live & ~is_infinite] = hit.spawn_ray_to(ds.p)
            ray[live & is_infinite] = hit.spawn_ray(ray.d)
            steps += 1
        return tr

    @dr.syntax
    def sample(self, scene: mi.Scene, sampler: mi.Sampler, ray_: mi.RayDifferential3f,
               medium: mi.Medium | None = None, active: mi.Bool = True):
        ctx = mi.BSDFContext()
        ray = mi.Ray3f(ray_)
        L = mi.Spectrum(0.0)
        beta = mi.Spectrum(1.0)
        active = mi.Bool(active)
        scattered = mi.UInt32(0)  # non-null scattering events so far
        n_diffuse = mi.UInt32(0)
        n_glossy = mi.UInt32(0)
        n_transparent = mi.UInt32(0)
        opaque = mi.Bool(False)
        terminal = mi.Bool(False)  # the last BSDF ray: traced for the emission it finds (MIS), then stop
        si_prev = dr.zeros(mi.SurfaceInteraction3f)
        pdf_prev = mi.Float(1.0)
        delta_prev = mi.Bool(True)
        albedo = mi.Color3f(0.0)
        normal = mi.Vector3f(0.0)
        it = mi.UInt32(0)

        while dr.hint(active, max_iterations=self.max_iterations, label="cycles_path"):
            si = scene.ray_intersect(ray, mi.RayFlags.All, coherent=it == 0, active=active)
            bsdf = si.bsdf(ray)
            flags = bsdf.flags()
            light_quad = si.is_valid() & ~mi.has_flag(flags, mi.BSDFFlags.Reflection) \
                & ~mi.has_flag(flags, mi.BSDFFlags.Transmission)

            # -- emission found by the previous BSDF sample (or seen directly, if it is the asset's)
            ds = mi.DirectionSample3f(scene, si=si, ref=si_prev)
            em_pdf = self._light_pdf(ds, si_prev, active & (scattered > 0) & ~delta_prev)
            w = dr.select(scattered > 0, _mis(pdf_prev, em_pdf), 1.0)
            visible = active & ((scattered > 0) | (si.is_valid() & ~light_quad))
            Le = beta * w * ds.emitter.eval(si, visible)
            L += _clamp_max(Le, self.clamp_indirect, (scattered > 1) & (self.clamp_indirect > 0))

            active &= si.is_valid() & ~terminal

            # -- light quads: pass straight through, nothing counted
            quad = active & light_quad
            ray[quad] = si.spawn_ray(ray.d)

            surf = active & ~light_quad
            # -- choose the lobe first (a null pick is a transparent pass)
            bs, bsdf_w = bsdf.sample(ctx, si, sampler.next_1d(surf), sampler.next_2d(surf), surf)
            is_null = surf & mi.has_flag(bs.sampled_type, mi.BSDFFlags.Null) & (bs.pdf > 0.0)
            scatter = surf & ~is_null  # an opaque vertex: alpha, AOVs and light sampling happen here
            bounce = scatter & (bs.pdf > 0.0)  # ... and it continues only if the BSDF sample succeeded

            # transparent pass: same direction, weight of the null lobe
            n_transparent[is_null] = n_transparent + 1
            beta[is_null] = beta * bsdf_w
            ray[is_null] = si.spawn_ray(ray.d)
            active &= ~(is_null & (n_transparent > self.transparent_bounces))
            active &= ~(scatter & ~bounce)

            # -- a scattering vertex: AOVs, next-event estimation, continuation
            first = scatter & (scattered == 0)
            opaque |= scatter
            if dr.hint(self.with_aovs, mode="scalar"):
                albedo[first] = mi.Color3f(bsdf.eval_diffuse_reflectance(si, first))
                normal[first] = si.sh_frame.n
            smooth = scatter & mi.has_flag(flags, mi.BSDFFlags.Smooth)
            for emitter in self._sampled_emitters(scene):
                ds_e, em_w = emitter.sample_direction(si, sampler.next_2d(smooth), smooth)
                do_nee = smooth & (ds_e.pdf != 0.0)
                tr = self._transmittance(scene, si, ds_e, do_nee)
                f_e, pdf_e = bsdf.eval_pdf(ctx, si, si.to_local(ds_e.d), do_nee)
                w_e = dr.select(ds_e.delta, 1.0, _mis(ds_e.pdf, pdf_e))
                Ld = beta * w_e * f_e * em_w * tr
                L[do_nee] = L + _clamp_max(Ld, self.clamp_indirect, scattered > 0)

            is_diffuse = mi.has_flag(bs.sampled_type, mi.BSDFFlags.Diffuse)
            n_diffuse[bounce & is_diffuse] = n_diffuse + 1
            n_glossy[bounce & ~is_diffuse] = n_glossy + 1
            over = (n_diffuse > self.diffuse_bounces) | (n_glossy > self.glossy_bounces)
            beta[bounce] = beta * bsdf_w
            si_prev[bounce] = si
            pdf_prev[bounce] = bs.pdf
            delta_prev[bounce] = mi.has_flag(bs.sampled_type, mi.BSDFFlags.Delta)
            ray[bounce] = si.spawn_ray(si.to_world(bs.wo))
            scattered[bounce] = scattered + 1
            terminal |= bounce & over
            active &= dr.max(beta) > 0.0
            it += 1

        aovs = []
        if dr.hint(self.with_aovs, mode="scalar"):
            aovs = [albedo.x, albedo.y, albedo.z, normal.x, normal.y, normal.z]
        return L, opaque, aovs

    def to_string(self) -> str:
        return (f"CyclesPathIntegrator[diffuse={self.diffuse_bounces}, glossy={self.glossy_bounces}, "
                f"transparent={self.transparent_bounces}, clamp_indirect={self.clamp_indirect}]")


def register() -> None:
    """Register the plugin with the active variant (idempotent per variant)."""
    mi.register_integrator(NAME, lambda props: CyclesPathIntegrator(props))
