"""The job entry: one build of a pipeline spec on a Ray cluster, then Parquet snapshots to the store.

Both cluster entry points run this file:

    ray submit ray_configs/build_dataset.yaml pipeline/job.py -- \\
        --spec ray_configs/specs/sample_cluster.yaml --root s3://bucket/trellis --catalog ~/catalog.duckdb
    ray job submit --address http://<head>:8265 -- \\
        python -m pipeline.job --spec ray_configs/specs/sample_cluster.yaml --root s3://bucket/trellis --catalog ~/catalog.duckdb

Inside a cluster it connects with `ray.init(address="auto")` (the head's running cluster, or the
`RAY_ADDRESS` that `ray job submit` sets); `--address local` starts a local Ray instead. The
DuckDB catalog is a file on the machine running this driver (the head node); workers only return
records. When the build fails for a cluster reason (a node died and Ray Data gave up on a block),
the job resumes in-process, up to `--max-restarts` times: the planner makes a resume run exactly
what is missing, so nothing is lost or done twice.

Storage options (s3fs etc.) come from the spec's `execution.storage_options` (never secrets: the
spec is recorded in the catalog), `--storage-option key=value`, or the JSON in
`TRELLIS_STORAGE_OPTIONS`. Credentials come from the environment the driver and the workers
already have (AWS_* variables, an instance profile, ~/.aws): never from the spec, and never logged.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `ray submit` runs this file as a script (python ~/job.py ...)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("trellis_data.job")

SECRET_KEYS = ("key", "secret", "token", "password", "passwd", "session_token", "access_key", "secret_key",
               "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "credentials", "auth")
"""Storage-option names that carry credentials: refused in specs (which the catalog records)."""


def _is_secret_key(name: str) -> bool:
    n = name.lower()
    return n in SECRET_KEYS or any(s in n for s in ("secret", "token", "password", "credential"))


def _secret_paths(options: Any, prefix: str = "") -> list[str]:
    out: list[str] = []
    if isinstance(options, Mapping):
        for k, v in options.items():
            path = f"{prefix}{k}"
            if _is_secret_key(str(k)) and v not in (None, "", False):
                out.append(path)
            out += _secret_paths(v, path + ".")
    return out


def parse_value(text: str) -> Any:
    """`--storage-option k=v` values: JSON where it parses (numbers, booleans, objects), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def storage_options(spec_execution: Mapping[str, Any], cli: Sequence[str], env: Mapping[str, str]) -> dict[str, Any]:
    """Merge storage options: spec (no secrets allowed) < TRELLIS_STORAGE_OPTIONS (JSON) < --storage-option."""
    from_spec = dict(spec_execution.get("storage_options") or {})
    bad = _secret_paths(from_spec)
    if bad:
        raise ValueError(f"the spec's execution.storage_options hold credentials ({', '.join(bad)}); the spec is "
                         "recorded in the catalog, so pass credentials through the environment instead "
                         "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, an instance profile, TRELLIS_STORAGE_OPTIONS)")
    out = from_spec
    if env.get("TRELLIS_STORAGE_OPTIONS"):
        out.update(json.loads(env["TRELLIS_STORAGE_OPTIONS"]))
    for item in cli:
        k, sep, v = item.partition("=")
        if not sep:
            raise ValueError(f"--storage-option wants key=value, got {item!r}")
        cur: dict[str, Any] = out
        parts = k.split(".")  # client_kwargs.endpoint_url=... sets a nested option
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = parse_value(v)
    return out


def _ray_address(arg: str | None) -> str | None:
    """None starts a local Ray ('local'); anything else goes to ray.init(address=...)."""
    if arg in (None, "", "auto"):
        return os.environ.get("RAY_ADDRESS") or "auto"
    if arg == "local":
        return None
    return arg


def _retryable_build_failure(exc: BaseException) -> bool:
    """Cluster failures worth a resume (a node or worker died, an object was lost), not spec bugs."""
    if isinstance(exc, (ValueError, TypeError, KeyError, FileNotFoundError, PermissionError, ImportError)):
        return False
    try:
        import ray.exceptions as rex

        if isinstance(exc, rex.RayError):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, (RuntimeError, ConnectionError, TimeoutError, OSError))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.job", description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", required=True, help="pipeline spec YAML (ray_configs/specs/...)")
    ap.add_argument("--root", required=True, help="store URL: s3://bucket/prefix, a shared folder, ...")
    ap.add_argument("--catalog", required=True, help="DuckDB catalog file on the head node")
    ap.add_argument("--address", default=None,
                    help="Ray address (default: auto, i.e. RAY_ADDRESS or the running cluster; 'local' starts one)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (with --address local)")
    ap.add_argument("--select", dest="selection", default=None, help="SQL over the catalog yielding sha256")
    ap.add_argument("--retry-failed", action="store_true", help="also retry permanent failures")
    ap.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                    help="fsspec storage option (repeatable; dots nest: client_kwargs.region_name=us-east-1)")
    ap.add_argument("--max-restarts", type=int, default=2, help="in-process resumes after a cluster failure")
    ap.add_argument("--no-export", action="store_true", help="skip metadata.csv and Parquet snapshots to the store")
    ap.add_argument("--summary", default=None, help="also write the JSON summary to this local file")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("ray", "filelock", "urllib3", "fsspec", "trimesh", "botocore", "s3fs", "aiobotocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from curation.errors import install_log_redaction, redact

    install_log_redaction()

    from catalogs.catalog import Catalog
    from catalogs.store import Store
    from pipeline.executor import build
    from pipeline.spec import PipelineSpec

    spec = PipelineSpec.load(args.spec)
    options = storage_options(spec.execution, args.storage_option, os.environ)
    address = _ray_address(args.address)
    catalog_path = str(Path(args.catalog).expanduser())

    reports = []
    attempt = 0
    started = time.monotonic()
    while True:
        try:
            report = build(spec, args.root, catalog_path, address=address, num_cpus=args.num_cpus,
                           selection=args.selection, retry_failed=args.retry_failed, storage_options=options,
                           progress=sys.stderr.isatty())
            reports.append(report)
            break
        except BaseException as exc:
            if attempt >= args.max_restarts or not _retryable_build_failure(exc):
                log.error("build failed: %s", redact(f"{type(exc).__name__}: {exc}"))
                raise
            attempt += 1
            log.warning("build interrupted by a cluster failure (%s); resuming (%d/%d)",
                        redact(f"{type(exc).__name__}: {str(exc)[:500]}"), attempt, args.max_restarts)
            time.sleep(min(10.0, 2.0 * attempt))

    catalog = Catalog(catalog_path)
    store = Store(args.root, **options)
    written: list[str] = []
    if not args.no_export:
        from catalogs.export import export

        written = export(catalog, store)
    per_node = catalog.query(
        "SELECT node_id, count(*) AS n FROM artifacts WHERE run_id IN (SELECT run_id FROM runs) GROUP BY node_id"
    ).to_pylist()
    summary = {
        "spec": spec.name, "root": args.root, "catalog": catalog_path, "restarts": attempt,
        "runs": [{"run_id": r.run_id, "planned": r.planned, "ok": r.ok, "failed": r.failed, "seconds": round(r.seconds, 3)}
                 for r in reports],
        "artifacts_per_node": {row["node_id"]: row["n"] for row in per_node if row["node_id"]},
        "exported": written, "seconds": round(time.monotonic() - started, 3),
    }
    text = redact(json.dumps(summary, sort_keys=True))
    print("TRELLIS_JOB_SUMMARY " + text, flush=True)
    if args.summary:
        Path(args.summary).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
