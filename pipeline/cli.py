"""`trellis-data`: build, status, query, export, reconcile (and the verbs later issues add)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from catalogs.catalog import Catalog
from catalogs.planner import status as plan_status


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("ray", "filelock", "urllib3", "fsspec", "trimesh"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def catalog_path(root: str, catalog: str | None) -> str:
    """The catalog file: explicit, else `<root>/catalog.duckdb` for a local root."""
    if catalog:
        return catalog
    if "://" in root and not root.startswith("file://"):
        raise click.UsageError("a remote --root needs --catalog (the DuckDB file lives on the driver/head node)")
    return str(Path(root.removeprefix("file://")) / "catalog.duckdb")


def format_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "(no rows)"
    cols = columns or list(rows[0])
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
    body = "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells)
    return f"{line}\n{'  '.join('-' * w for w in widths)}\n{body}"


root_option = click.option("--root", required=True, envvar="TRELLIS_ROOT", help="Store URL: a folder, s3://…, memory://…")
catalog_option = click.option("--catalog", envvar="TRELLIS_CATALOG", default=None,
                              help="DuckDB catalog file (default: <root>/catalog.duckdb for a local root).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """Build TRELLIS-style training data on Ray, indexed by a DuckDB catalog."""
    _setup_logging(verbose)


@main.command()
@click.option("--spec", "spec_path", required=True, type=click.Path(exists=True, dir_okay=False), help="Pipeline spec YAML.")
@root_option
@catalog_option
@click.option("--address", default=None, envvar="RAY_ADDRESS", help="Ray cluster address (default: start a local one).")
@click.option("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster.")
@click.option("--select", "selection", default=None, help="SQL over the catalog yielding sha256 (default: the spec's, else all).")
@click.option("--retry-failed", is_flag=True, help="Also retry permanent failures (up to each stage's attempt cap).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def build(spec_path: str, root: str, catalog: str | None, address: str | None, num_cpus: int | None,
          selection: str | None, retry_failed: bool, no_progress: bool) -> None:
    """Run the pipeline: whatever is missing, stale or retryable, and nothing else."""
    from pipeline.executor import build as run_build
    from pipeline.spec import PipelineSpec, plan_stages

    spec = PipelineSpec.load(spec_path)
    cat_path = catalog_path(root, catalog)
    report = run_build(spec, root, cat_path, address=address, num_cpus=num_cpus, selection=selection,
                       retry_failed=retry_failed, progress=not no_progress)
    if not report.did_work:
        click.echo(f"Nothing to do: every selected asset is current for all {len(spec.stages)} stages.")
    else:
        click.echo(f"Run {report.run_id} finished in {report.seconds:.1f} s.")
    stages = plan_stages(spec.build_stages())
    click.echo(format_table(plan_status(Catalog(cat_path), stages, selection or spec.selection)))
    click.echo(f"store:   {root}\ncatalog: {cat_path}")


@main.command()
@click.option("--spec", "spec_path", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Pipeline spec (default: the spec of the last run).")
@root_option
@catalog_option
@click.option("--select", "selection", default=None, help="SQL selection (default: the spec's, else all).")
def status(spec_path: str | None, root: str, catalog: str | None, selection: str | None) -> None:
    """Per stage and variant: current, stale, failed, blocked, missing."""
    from pipeline.spec import PipelineSpec, plan_stages

    cat = Catalog(catalog_path(root, catalog), read_only=True)
    if spec_path:
        spec = PipelineSpec.load(spec_path)
    else:
        last = cat.last_spec()
        if last is None:
            raise click.UsageError("no run recorded yet; pass --spec")
        spec = PipelineSpec.from_dict(last)
    click.echo(format_table(plan_status(cat, plan_stages(spec.build_stages()), selection or spec.selection)))


@main.command()
@click.argument("sql")
@root_option
@catalog_option
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
def query(sql: str, root: str, catalog: str | None, fmt: str) -> None:
    """Run SQL on a read-only connection to the catalog."""
    table = Catalog(catalog_path(root, catalog), read_only=True).query(sql)
    rows = table.to_pylist()
    if fmt == "json":
        click.echo(json.dumps(rows, default=str, indent=1))
    elif fmt == "csv":
        import pyarrow.csv as pacsv

        sink = sys.stdout.buffer
        pacsv.write_csv(table, sink)
    else:
        click.echo(format_table(rows, table.column_names))


@main.command()
@root_option
@catalog_option
@click.option("--out", default=None, help="Where metadata.csv goes (default: the store root).")
def export(root: str, catalog: str | None, out: str | None) -> None:
    """Write TRELLIS's metadata.csv + statistics.txt and Parquet snapshots of the catalog."""
    from catalogs.export import export as do_export
    from catalogs.store import Store

    written = do_export(Catalog(catalog_path(root, catalog), read_only=True), Store(root), Store(out) if out else None)
    for w in written:
        click.echo(w)


@main.command()
@root_option
@catalog_option
def reconcile(root: str, catalog: str | None) -> None:
    """Rebuild catalog rows from what is in the store (snapshots, record logs, files)."""
    from catalogs.reconcile import reconcile as do_reconcile
    from catalogs.store import Store

    summary = do_reconcile(Store(root), Catalog(catalog_path(root, catalog)))
    click.echo(format_table([summary]))


@main.command()
@click.option("--subset", required=True, help="A subset imported into the catalog, e.g. TRELLIS-500K.")
@root_option
@catalog_option
def coverage(subset: str, root: str, catalog: str | None) -> None:
    """Per source: listed, obtained, missing, failed by reason, for a named subset."""
    from curation.subsets import coverage as subset_coverage, format_coverage

    click.echo(format_coverage(subset_coverage(Catalog(catalog_path(root, catalog), read_only=True), subset), subset))


@main.command("plan")
@click.option("--spec", "spec_path", required=True, type=click.Path(exists=True, dir_okay=False), help="Pipeline spec YAML.")
@root_option
@catalog_option
@click.option("--sample", default="1%", show_default=True, help="Fraction of the selection to build for real: 1%, 0.05, …")
@click.option("--assets", type=int, default=None, help="Sample this many assets instead of a fraction.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random sample.")
@click.option("--cluster", default=None, help='Cluster shape to predict for, e.g. "cpus=512,gpus=32" (default: this one).')
@click.option("--select", "selection", default=None, help="SQL selection (default: the spec's, else all).")
@click.option("--address", default=None, envvar="RAY_ADDRESS", help="Ray cluster address (default: start a local one).")
@click.option("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def plan_cmd(spec_path: str, root: str, catalog: str | None, sample: str, assets: int | None, seed: int,
             cluster: str | None, selection: str | None, address: str | None, num_cpus: int | None,
             no_progress: bool) -> None:
    """Build a random sample for real, then predict time, CPU/GPU-hours and disk for the whole selection."""
    from pipeline.estimate import estimate, stage_rows, summary_lines
    from pipeline.spec import PipelineSpec

    est = estimate(PipelineSpec.load(spec_path), root, catalog_path(root, catalog), sample=sample, assets=assets,
                   seed=seed, cluster=cluster, selection=selection, address=address, num_cpus=num_cpus,
                   progress=not no_progress)
    click.echo(format_table(stage_rows(est)))
    click.echo("\n".join(summary_lines(est)))


@main.command()
@root_option
@catalog_option
@click.option("--out", default=None, help="Report folder (default: <root>/report).")
@click.option("--thumbs", type=int, default=24, show_default=True, help="Thumbnails per contact sheet.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random contact sheet.")
def report(root: str, catalog: str | None, out: str | None, thumbs: int, seed: int) -> None:
    """Write a static HTML report of the dataset (one folder, opens from disk)."""
    from pipeline.report import write_report

    if out is None and "://" in root and not root.startswith("file://"):
        raise click.UsageError("a remote --root needs --out")
    index = write_report(root, catalog_path(root, catalog), out or str(Path(root.removeprefix("file://")) / "report"),
                         thumbs=thumbs, seed=seed)
    click.echo(str(index))


@main.command()
@click.option("--stage", required=True, help="The model stage to switch (features, ss_latent, slat or its spec name).")
@click.option("--model", required=True, help="New model: a local folder/stem, a Hugging Face id, or tiny:<kind>[:<seed>].")
@click.option("--name", default=None, help="Variant name for the new model (default: the model's own name).")
@click.option("--spec", "spec_path", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Pipeline spec (default: the spec of the last run).")
@root_option
@catalog_option
@click.option("--address", default=None, envvar="RAY_ADDRESS", help="Ray cluster address (default: start a local one).")
@click.option("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster.")
@click.option("--select", "selection", default=None, help="SQL selection (default: the spec's, else all).")
@click.option("--dry-run", is_flag=True, help="Only show what would be stale.")
def reencode(stage: str, model: str, name: str | None, spec_path: str | None, root: str, catalog: str | None,
             address: str | None, num_cpus: int | None, selection: str | None, dry_run: bool) -> None:
    """Swap a stage's checkpoint and re-run exactly the rows it makes stale."""
    from encode.reencode import reencode_spec_dict
    from pipeline.executor import build as run_build
    from pipeline.spec import PipelineSpec, plan_stages

    cat_path = catalog_path(root, catalog)
    if spec_path:
        base = PipelineSpec.load(spec_path).to_dict()
    else:
        base = Catalog(cat_path, read_only=True).last_spec()
        if base is None:
            raise click.UsageError("no run recorded yet; pass --spec")
    spec = PipelineSpec.from_dict(reencode_spec_dict(base, stage, model, name))
    stages = plan_stages(spec.build_stages())
    click.echo(format_table(plan_status(Catalog(cat_path, read_only=True), stages, selection or spec.selection)))
    if dry_run:
        return
    report = run_build(spec, root, cat_path, address=address, num_cpus=num_cpus, selection=selection, progress=False)
    click.echo(f"Run {report.run_id}: planned {report.planned}, ok {report.ok}, failed {report.failed}.")
    click.echo(format_table(plan_status(Catalog(cat_path), stages, selection or spec.selection)))


@main.command("stats")
@click.option("--variant", required=True, help="SLat variant, e.g. dinov2_vitl14_reg_slat_enc_swin8_B_64l8_fp16.")
@root_option
@catalog_option
@click.option("--select", "selection", default=None, help="SQL yielding sha256 (default: every asset).")
@click.option("--sample", type=int, default=50_000, show_default=True, help="At most this many assets (seeded draw).")
@click.option("--seed", type=int, default=0, show_default=True)
def stats_cmd(variant: str, root: str, catalog: str | None, selection: str | None, sample: int, seed: int) -> None:
    """Latent mean/std (asset-weighted) -> latents/<variant>/stats.json, recorded in the catalog."""
    from catalogs.store import Store
    from encode.stats import latent_stats

    st = latent_stats(Catalog(catalog_path(root, catalog)), Store(root), variant, selection, sample, seed)
    click.echo(json.dumps({"mean": st.mean, "std": st.std, "n_used": st.n_used, "n_failed": st.n_failed,
                           "uri": st.uri}, indent=1))


@main.command()
@click.option("--pipeline", "pipeline_path", required=True, help="Pipeline folder (pipeline.json) or Hub repo id.")
@click.option("--image", default=None, type=click.Path(exists=True, dir_okay=False), help="Condition image (image-to-3D).")
@click.option("--prompt", default=None, help="Text prompt (text-to-3D).")
@click.option("--out", required=True, help="Mesh file to write (.glb, .ply, .obj).")
@click.option("--seed", type=int, default=42)
@click.option("--steps", type=int, default=None, help="Override both samplers' step counts.")
@click.option("--device", default=None, help="cpu, cuda, … (default: cuda when available).")
def generate(pipeline_path: str, image: str | None, prompt: str | None, out: str, seed: int, steps: int | None,
             device: str | None) -> None:
    """Generate a mesh from an image or a prompt with a TRELLIS(-layout) pipeline."""
    from trellis_core.generate import ImageTo3DPipeline, TextTo3DPipeline, save_mesh

    if (image is None) == (prompt is None):
        raise click.UsageError("pass exactly one of --image or --prompt")
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    params = {"steps": steps} if steps else {}
    if image is not None:
        from PIL import Image

        pipe = ImageTo3DPipeline.from_pretrained(pipeline_path, device=device)
        res = pipe.run(Image.open(image), seed=seed, ss_params=params, slat_params=params)
    else:
        pipe = TextTo3DPipeline.from_pretrained(pipeline_path, device=device)
        res = pipe.run(prompt, seed=seed, ss_params=params, slat_params=params)
    mesh = res["mesh"][0]
    save_mesh(mesh, out)
    click.echo(f"{out}: {len(mesh['vertices'])} vertices, {len(mesh['faces'])} faces "
               f"({int(res['coords'].shape[0])} voxels)")


if __name__ == "__main__":
    main()
