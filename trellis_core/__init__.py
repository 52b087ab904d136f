"""trellis_core package."""
