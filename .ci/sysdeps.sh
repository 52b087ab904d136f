#!/usr/bin/env bash
# System libraries the Python wheels need (open3d: libusb; bpy/EGL: X/GL libs; Mitsuba's LLVM backend:
# libLLVM 19, bookworm's default 14/15 crash it; report tests: chromium).
set -euo pipefail
pkgs="libusb-1.0-0 libxrender1 libxi6 libxkbcommon0 libsm6 libxext6 libxfixes3 libgl1 libegl1 libegl-mesa0 libgl1-mesa-dri libllvm19"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "missing system packages:$missing (run as root or: sudo apt-get install$missing)" >&2; exit 1
  fi
fi
# Headless Chromium for the report's browser tests (they skip without it); installed only as root.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: chromium is not installed; the report's browser tests will skip (sudo apt-get install chromium)" >&2
  fi
fi
