"""Every released key listing: built from the released config on the meta device, the state dict
has exactly those names/shapes/dtypes, strict loading passes and parameter counts match MODELS.md 10."""
import json
import re

from pathlib import Path

import pytest
import torch

from trellis_core import get_model_class
from trellis_core.models import RELEASED_CONFIGS

SPEC_DIR = (Path(__file__).resolve().parents[2] / ".." / "shared" / "spec").resolve()

KEY_FILES = sorted(p.stem for p in (SPEC_DIR / "keys").glob("*.tsv")) if (SPEC_DIR / "keys").exists() else []
DT = {"F32": torch.float32, "F16": torch.float16}


def _read_tsv(path):
    out = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        k, shape, dt = line.split("\t")
        out[k] = (tuple(json.loads(shape)), DT[dt])
    return out


def _summary_table(spec_dir):
    """MODELS.md section 10: name -> (params, buffer elems, keys, f16 keys, tensor bytes)."""
    rows = {}
    text = (spec_dir / "MODELS.md").read_text()
    sec = text[text.index("## 10."):]
    for line in sec.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 9 and cells[0] in RELEASED_CONFIGS:
            nums = [int(c.replace(",", "")) for c in cells[4:9]]
            rows[cells[0]] = nums
    return rows


def test_every_key_file_has_a_config(spec_dir):
    names = {p.stem for p in (spec_dir / "keys").glob("*.tsv")}
    assert names == set(RELEASED_CONFIGS)


@pytest.mark.parametrize("name", KEY_FILES)
def test_released_keys(spec_dir, name):
    expected = _read_tsv(spec_dir / "keys" / f"{name}.tsv")
    cfg = RELEASED_CONFIGS[name]
    with torch.device("meta"):
        model = get_model_class(cfg["name"])(**cfg["args"])
    sd = model.state_dict()
    ours = {k: (tuple(v.shape), v.dtype) for k, v in sd.items()}
    missing, extra = set(expected) - set(ours), set(ours) - set(expected)
    assert not missing and not extra, f"missing {sorted(missing)[:10]}, extra {sorted(extra)[:10]}"
    wrong = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert not wrong, f"shape/dtype mismatches: {dict(list(wrong.items())[:10])}"

    # strict load of a state dict with exactly the listed names/shapes/dtypes
    state = {k: torch.empty(s, dtype=d, device="meta") for k, (s, d) in expected.items()}
    res = model.load_state_dict(state, strict=True, assign=True)
    assert not res.missing_keys and not res.unexpected_keys

    table = _summary_table(spec_dir)[name]
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    f16 = sum(1 for v in sd.values() if v.dtype == torch.float16)
    nbytes = sum(v.numel() * v.element_size() for v in sd.values())
    assert [params, buffers, len(sd), f16, nbytes] == table
