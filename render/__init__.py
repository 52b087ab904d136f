"""Rendering with headless Blender (bpy 5.x): feature and conditioning renders, normalized mesh export.

- `render.cameras`: the reference camera sets (remapped Hammersley, conditioning radius/FOV rule),
  c2w matrices in the Blender/OpenGL convention, transforms.json; pure numpy.
- `render.blender_scene`: runs inside the Blender process; reset, importers, normalisation, camera,
  lights, engine settings, per-view PNGs, optional depth/normal/albedo passes, mesh.ply, signals.
- `render.worker`: the warm Blender child process (bpy imported once), per-asset timeout, crash
  detection and replacement, Blender's log captured per asset.
- `render.stages`: `RenderStage` ("render" -> renders/<sha>/) and `RenderCondStage`
  ("render_cond" -> renders_cond/<sha>/).
"""
