"""The reference scene of DATA_FORMATS.md §3.1 (lights, world), shared by both render engines.

Blender (`render.blender_scene`) builds these as Blender lights; Mitsuba (`render.mitsuba_scene`)
converts them with the units `render.calibration` measured. One table, so the engines cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

WORLD_GREY = 0.050876
"""Background colour of Blender's factory world (the reference leaves it on, G3)."""

AREA_LIGHT_SIZE = 0.25
"""Side (m) of a Blender area light made by `bpy.data.lights.new` (measured), before object scale."""


@dataclass(frozen=True)
class Light:
    name: str
    kind: str  # "POINT" or "AREA" (square, emits along its local -Z)
    watts: float
    location: tuple[float, float, float]
    scale: float = 1.0


LIGHTS = (
    Light("Default_Light", "POINT", 1000.0, (4.0, 1.0, 6.0)),
    Light("Top_Light", "AREA", 10000.0, (0.0, 0.0, 10.0), 100.0),
    Light("Bottom_Light", "AREA", 1000.0, (0.0, 0.0, -10.0)),  # faces away from the object (G3)
)
