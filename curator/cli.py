"""The ``curator`` command line: parse, call one library function, print. No logic here.

Every command calls the function of the same name in :mod:`curator.api` with the same
keyword arguments (imported when the command runs, so ``--help`` stays fast); a
:class:`~curator.errors.CuratorError` becomes ``Error: …`` on stderr and exit code 1.
Nothing in the package imports this module.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import click

os.environ.setdefault("LANCE_LOG", "error")


class Context:
    def __init__(self, db, table, quiet, engine=None):
        self.db, self.table, self.quiet, self.engine = db, table, quiet, engine


def library_call(fn):
    """Turn CuratorError into one line on stderr and exit code 1 (done once, here)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .errors import CuratorError

        try:
            return fn(*args, **kwargs)
        except CuratorError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def emit(result, as_json: bool) -> None:
    """Print a result object: one JSON object with --json, else its summary lines."""
    data = result.to_dict() if hasattr(result, "to_dict") else result
    if as_json:
        click.echo(json.dumps(data, default=_jsonable))
        return
    if hasattr(result, "summary"):
        click.echo(result.summary())
        return
    for key, value in data.items():
        if isinstance(value, dict):
            value = json.dumps(value, default=_jsonable)
        click.echo(f"{key}: {value}")


def _jsonable(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
    except ImportError:
        pass
    return str(value)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
DEVICE_HELP = ("Where the products run: auto (a CUDA GPU when torch sees one, else cpu), "
               "cpu (numpy), cuda, cuda:N, torch-cpu.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", envvar="CURATOR_DB", default=None,
              help="LanceDB directory or URI (default: $CURATOR_DB, else ./curator.lancedb).")
@click.option("--table", default="embeddings", show_default=True, help="Dataset table.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--engine", envvar="CURATOR_ENGINE", default=None,
              help="local (default) or ray; Ray joins $RAY_ADDRESS or starts locally.")
@click.version_option(package_name="clip-curator", prog_name="curator")
@click.pass_context
def cli(ctx, db, table, quiet, engine):
    """Curate image-text training data by the geometry of raw CLIP embeddings."""
    ctx.obj = Context(db, table, quiet, engine)


@cli.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--modality", help="Modality of every row (npy/npz; parquet without a modality column).")
@click.option("--model", help="Model name the vectors come from (recorded by the table).")
@click.option("--id-column", default="id", show_default=True)
@click.option("--vector-column", default="embedding", show_default=True)
@click.option("--sample-column", default="sample_id", show_default=True)
@click.option("--modality-column", default="modality", show_default=True)
@click.option("--on-duplicate", type=click.Choice(["error", "skip", "replace"]), default="error",
              show_default=True)
@click.option("--generate-ids", is_flag=True, help="Parquet without ids: name rows FILE:ROW.")
@click.option("--ids", type=click.Path(), help="npy/npz: a text file (one id a line) or parquet of ids.")
@click.option("--metadata", type=click.Path(), help="npy/npz: a parquet of metadata aligned by row.")
@click.option("--score/--no-score", default=True, show_default=True,
              help="--no-score: bulk load, leave new rows for one later refresh.")
@json_option
@click.pass_obj
@library_call
def ingest(obj, sources, as_json, **options):
    """Add raw embeddings from parquet, .npy/.npz or clip-retrieval SOURCES."""
    from .api import ingest as run

    emit(run(list(sources), db=obj.db, table=obj.table, quiet=obj.quiet, **options), as_json)


@cli.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--arch", default="ViT-B-32", show_default=True, help="open_clip architecture.")
@click.option("--pretrained", default=None, help="open_clip pretrained tag or a local checkpoint file.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, mps.")
@click.option("--batch-size", default=64, show_default=True, type=int)
@click.option("--num-workers", default=None, type=int, help="Image decoding workers.")
@click.option("--strict", is_flag=True, help="A corrupt image is an error instead of skipped.")
@click.option("--image-column", default="image", show_default=True)
@click.option("--caption-column", default="caption", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of randomly initialised weights (no --pretrained).")
@click.option("--commit-every", default=None, type=int,
              help="Ingest every N rows, so a killed run keeps its progress (default: one transaction).")
@json_option
@click.pass_obj
@library_call
def encode(obj, sources, as_json, **options):
    """Encode images and captions with OpenCLIP into raw embeddings and ingest them."""
    from .api import encode as run

    emit(run(list(sources), db=obj.db, table=obj.table, quiet=obj.quiet, **options), as_json)


@cli.command()
@json_option
@click.pass_obj
@library_call
def stats(obj, as_json):
    """Per-modality statistics, including each modality's max_staleness."""
    from .api import stats as run

    emit(run(db=obj.db, table=obj.table), as_json)


@cli.command()
@click.option("--tolerance", default=0.0, show_default=True, type=float,
              help="Rescore rows whose conformity error bound exceeds this.")
@click.option("--reference", default=None,
              help="Instead: write ref_* scores against this table's statistics.")
@json_option
@click.pass_obj
@library_call
def refresh(obj, tolerance, reference, as_json):
    """Rescore rows whose staleness bound exceeds --tolerance (or score against --reference)."""
    from .api import refresh as run

    emit(run(db=obj.db, table=obj.table, tolerance=tolerance, reference=reference, quiet=obj.quiet,
             engine=obj.engine), as_json)


@cli.command()
@click.option("--k", "k", required=True, type=int, help="Clusters per modality.")
@click.option("--modality", default=None, help="Only this modality (default: each).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--sample", default=None, type=int,
              help="Rows to train on (default: all up to 200,000).")
@click.option("--iterations", default=25, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@json_option
@click.pass_obj
@library_call
def cluster(obj, as_json, **options):
    """Spherical k-means concepts per modality: writes cluster and cluster_size."""
    from .api import cluster as run

    emit(run(db=obj.db, table=obj.table, quiet=obj.quiet, engine=obj.engine, **options), as_json)


@cli.command()
@click.option("--eps", required=True, type=float, help="Near duplicates: cosine ≥ 1 − eps.")
@click.option("--modality", default=None)
@click.option("--keep", type=click.Choice(["least-conformity", "most-conformity", "best-alignment",
                                           "random"]), default="least-conformity", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@json_option
@click.pass_obj
@library_call
def dedupe(obj, as_json, **options):
    """Near-duplicate groups: writes dup_group and is_duplicate."""
    from .api import dedupe as run

    emit(run(db=obj.db, table=obj.table, quiet=obj.quiet, engine=obj.engine, **options), as_json)


@cli.command()
@click.option("--cap", required=True, type=int, help="MetaCLIP threshold t: keep min(1, t/count).")
@click.option("--by", default="cluster", show_default=True,
              help="cluster, conformity, or any metadata COLUMN.")
@click.option("--bins", default=20, show_default=True, type=int, help="Conformity bins (--by conformity).")
@click.option("--modality", default=None)
@click.option("--seed", default=0, show_default=True, type=int)
@json_option
@click.pass_obj
@library_call
def rebalance(obj, as_json, **options):
    """MetaCLIP-style frequency caps: writes rebalance_keep."""
    from .api import rebalance as run

    emit(run(db=obj.db, table=obj.table, engine=obj.engine, **options), as_json)


@cli.command()
@click.argument("sql")
@click.option("--format", type=click.Choice(["table", "csv", "json", "parquet"]),
              default="table", show_default=True)
@click.option("--out", type=click.Path(), help="Write the result to this file.")
@json_option
@click.pass_obj
@library_call
def query(obj, sql, format, out, as_json):
    """Run one read-only DuckDB SQL query; every table is visible by name, plus `pairs`."""
    from .api import query as run
    from .io.query import render, rows_json

    result = run(sql, db=obj.db, table=obj.table, format=format, out=out)
    if as_json:
        click.echo(json.dumps(rows_json(result, out), default=_jsonable))
    elif not out:
        click.echo(render(result, format), nl=False)


@cli.command()
@click.option("--out", required=True, type=click.Path(), help="Folder to write.")
@click.option("--where", default=None, help="SQL predicate (DuckDB) selecting rows.")
@click.option("--format", "format", type=click.Choice(["parquet", "jsonl", "csv", "npy", "lance"]),
              default="parquet", show_default=True)
@click.option("--unit", type=click.Choice(["row", "sample"]), default="row", show_default=True,
              help="sample: keep or drop whole samples.")
@click.option("--overwrite", is_flag=True, help="Replace an existing export folder.")
@click.option("--table-version", type=int, default=None,
              help="Export this table version (default: the latest).")
@json_option
@click.pass_obj
@library_call
def export(obj, as_json, **options):
    """Write the selected rows and a manifest.json that reproduces the export."""
    from .api import export as run

    emit(run(db=obj.db, table=obj.table, engine=obj.engine, **options), as_json)


@cli.command()
@click.option("--out", required=True, type=click.Path(), help="Folder for index.html, PNGs, report.json.")
@click.option("--sample", "sample", default=5000, show_default=True, type=int,
              help="Rows per modality for the pairwise and plotted parts.")
@click.option("--seed", default=0, show_default=True, type=int)
@json_option
@click.pass_obj
@library_call
def report(obj, as_json, **options):
    """HTML report of the double-ellipsoid geometry of the table."""
    from .api import report as run

    emit(run(db=obj.db, table=obj.table, **options), as_json)


@cli.command()
@click.option("--repair", is_flag=True, help="Rebuild statistics and rescore what drifted.")
@json_option
@click.pass_obj
@library_call
def verify(obj, repair, as_json):
    """Recompute statistics and scores from the rows and report any drift."""
    from .api import verify as run

    result = run(db=obj.db, table=obj.table, repair=repair)
    emit(result, as_json)
    if not result.ok and not repair:
        sys.exit(1)


@cli.command()
@click.option("--keep-versions", default=None, type=int,
              help="Keep versions newer than this many days (default: 7), and those exports name.")
@json_option
@click.pass_obj
@library_call
def optimize(obj, as_json, **options):
    """Compact fragments, prune old versions, update indexes."""
    from .api import optimize as run

    emit(run(db=obj.db, table=obj.table, **options), as_json)


@cli.command()
@click.option("--out", default="curator-demo", show_default=True, type=click.Path())
@click.option("--samples", "--rows", "samples", default=4000, show_default=True, type=int,
              help="Synthetic image-text samples (rows are ~4x this; --rows is an old name).")
@click.option("--seed", default=0, show_default=True, type=int)
@json_option
@click.pass_obj
@library_call
def demo(obj, as_json, **options):
    """The whole pipeline on seeded synthetic data, end to end, with a report."""
    from .api import demo as run

    emit(run(quiet=obj.quiet, **options), as_json)


def main(argv=None):
    """Console entry point: tune the allocator before Lance allocates, then run."""
    from .store.database import tune_allocator

    tune_allocator()
    cli.main(args=argv, prog_name="curator")


if __name__ == "__main__":
    main()
