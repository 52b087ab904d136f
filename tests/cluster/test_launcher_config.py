"""The cluster-launcher YAMLs pass Ray's own validation offline, and the specs and job entry parse.

`_bootstrap_config` is what `ray up` runs first: defaults, jsonschema validation, provider
bootstrap. For the local provider it makes no network calls. For AWS it runs against moto's
in-process mock (no sockets are opened; the test blocks every non-loopback connect to be sure),
with the instance-type catalogue stubbed for the three instance types we name.
"""

from __future__ import annotations

import copy
import socket
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from pipeline.job import storage_options
from pipeline.registry import STAGES
from pipeline.spec import PipelineSpec

REPO = Path(__file__).resolve().parents[2]
CFG = REPO / "ray_configs"

INSTANCE_TYPES = [
    {"InstanceType": "m6i.2xlarge", "VCpuInfo": {"DefaultVCpus": 8}, "MemoryInfo": {"SizeInMiB": 32768}},
    {"InstanceType": "c6i.8xlarge", "VCpuInfo": {"DefaultVCpus": 32}, "MemoryInfo": {"SizeInMiB": 65536}},
    {"InstanceType": "g5.12xlarge", "VCpuInfo": {"DefaultVCpus": 48}, "MemoryInfo": {"SizeInMiB": 196608},
     "GpuInfo": {"Gpus": [{"Name": "A10G", "Manufacturer": "NVIDIA", "Count": 4, "MemoryInfo": {"SizeInMiB": 24576}}],
                 "TotalGpuMemoryInMiB": 98304}},
]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """HOME in tmp (the AWS bootstrap writes a key file to ~/.ssh), fake credentials, no sockets out."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-west-2",
                 "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    real = socket.socket.connect

    def guard(self, addr):
        if isinstance(addr, tuple) and not str(addr[0]).startswith("127."):
            raise AssertionError(f"network call to {addr} during offline validation")
        return real(self, addr)

    monkeypatch.setattr(socket.socket, "connect", guard)
    return tmp_path


def load(name: str) -> dict:
    return yaml.safe_load((CFG / name).read_text())


def bootstrap(cfg: dict) -> dict:
    from ray.autoscaler._private.commands import _bootstrap_config

    return _bootstrap_config(copy.deepcopy(cfg), no_config_cache=True)


def test_local_provider_config_validates_offline(offline):
    cfg = bootstrap(load("build_dataset.local.yaml"))
    assert cfg["provider"]["type"] == "local"
    assert cfg["head_node_type"] == "local.cluster.node"
    assert cfg["available_node_types"]["local.cluster.node"]["min_workers"] == 2
    assert cfg["provider"]["worker_ips"] == ["10.0.0.11", "10.0.0.12"]
    # custom resources per role are on the ray start lines
    assert any('"render"' in c for c in cfg["worker_start_ray_commands"])
    assert any('"head"' in c for c in cfg["head_start_ray_commands"])
    setup = " ".join(cfg["head_setup_commands"])
    assert setup.index("torch==2.13.0") < setup.index("-e ")


def test_aws_config_validates_offline(offline, monkeypatch):
    from moto import mock_aws
    from ray.autoscaler._private.aws import node_provider

    monkeypatch.setattr(node_provider, "list_ec2_instances", lambda region, creds=None: copy.deepcopy(INSTANCE_TYPES))
    raw = load("build_dataset.yaml")
    with mock_aws():
        cfg = bootstrap(raw)
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] == "head" and set(types) == {"head", "render_cpu", "gpu_model"}
    assert types["head"]["resources"]["CPU"] == 0 and types["head"]["resources"]["head"] == 1
    assert types["render_cpu"]["resources"]["render"] > 0 and "GPU" not in types["render_cpu"]["resources"]
    gpu = types["gpu_model"]["resources"]
    assert gpu["GPU"] == 4 and gpu["gpu_model"] == 4 and gpu["accelerator_type:A10G"] == 1
    assert all(t["node_config"].get("SubnetIds") for t in types.values())  # bootstrap filled in the network
    # setup: system setup on every node type, torch before the package, CUDA only on GPU nodes
    for name, wheel in (("render_cpu", "whl/cpu"), ("gpu_model", "whl/cu")):
        cmds = types[name]["worker_setup_commands"]
        assert "apt-get install" in cmds[0]
        text = "\n".join(cmds)
        assert wheel in text and text.index("torch==2.13.0") < text.index("-e ")
    head = "\n".join(cfg["head_setup_commands"])
    assert "whl/cpu" in head and head.index("torch==2.13.0") < head.index("-e ")
    assert any(k.endswith("trellis-data") for k in cfg["file_mounts"])
    # no credentials in the launcher config
    text = (CFG / "build_dataset.yaml").read_text().lower()
    assert "aws_secret_access_key" not in text and "aws_access_key_id" not in text and "hf_" not in text


def test_validation_rejects_a_typo(offline):
    bad = load("build_dataset.local.yaml")
    bad["idle_timeout_minutez"] = 5
    with pytest.raises(jsonschema.ValidationError):
        bootstrap(bad)
    bad = load("build_dataset.local.yaml")
    bad["provider"]["worker_ips"] = "10.0.0.11"
    with pytest.raises(jsonschema.ValidationError):
        bootstrap(bad)


def test_cluster_specs_parse_and_name_registered_stages():
    for path in sorted((CFG / "specs").glob("*.yaml")):
        spec = PipelineSpec.load(path)
        for e in spec.stages:
            assert e.use in STAGES, (path.name, e.use)
            assert not set(e.config.get("resources", {})) - {"num_cpus", "num_gpus", "memory", "custom"}
        storage_options(spec.execution, [], {})  # no credentials in a spec
    spec = PipelineSpec.load(CFG / "specs" / "sample_cluster.yaml")
    stages = {s.name: s for s in spec.build_stages()}
    assert stages["voxelize"].resources.custom == {"render": 0.5}
    assert stages["normalize"].resources.num_cpus == 0.5  # the class default survives a custom-only override
    # placement is run-time config: it does not change fingerprints
    raw = yaml.safe_load((CFG / "specs" / "sample_cluster.yaml").read_text())
    for e in raw["stages"]:
        e.pop("config", None)
    plain = PipelineSpec.from_dict(raw).build_stages()
    from pipeline.spec import plan_stages

    assert [p.fingerprint for p in plan_stages(plain)] == [p.fingerprint for p in plan_stages(spec.build_stages())]
    big = PipelineSpec.load(CFG / "specs" / "trellis500k.yaml")
    conf = {e.name: e.config for e in big.stages}
    assert conf["render"]["resources"]["custom"] == {"render": 1}
    assert all(conf[s]["resources"]["num_gpus"] == 1 and conf[s]["resources"]["custom"] == {"gpu_model": 1}
               for s in ("features", "ss_latent", "slat"))


def test_storage_options_merge_and_refuse_secrets_in_specs():
    opts = storage_options({"storage_options": {"endpoint_url": "http://127.0.0.1:9000"}},
                           ["client_kwargs.region_name=us-east-1", "use_listings_cache=false"],
                           {"TRELLIS_STORAGE_OPTIONS": '{"anon": false}'})
    assert opts == {"endpoint_url": "http://127.0.0.1:9000", "client_kwargs": {"region_name": "us-east-1"},
                    "use_listings_cache": False, "anon": False}
    for bad in ({"secret": "x"}, {"key": "AKIA"}, {"client_kwargs": {"aws_secret_access_key": "x"}}, {"token": "t"}):
        with pytest.raises(ValueError, match="credentials"):
            storage_options({"storage_options": bad}, [], {})


@pytest.mark.parametrize("mode", ["module", "script"])
def test_job_entry_help_in_both_modes(mode, tmp_path):
    cmd = [sys.executable, "-m", "pipeline.job", "--help"] if mode == "module" else [sys.executable, str(REPO / "pipeline" / "job.py"), "--help"]
    out = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--spec" in out.stdout and "--catalog" in out.stdout
