"""The ``curator`` command line: parse, call one library function, print. No logic here.

Every command calls the function of the same name in :mod:`curator.api` with the same
keyword arguments (imported when the command runs, so ``--help`` stays fast); a
:class:`~curator.errors.CuratorError` becomes ``Error: …`` on stderr and exit code 1.
Nothing in the package imports this module.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys

import click

os.environ.setdefault("LANCE_LOG", "error")


class Context:
    def __init__(self, db, table, quiet, engine=None):
        self.db, self.table, self.quiet, self.engine = db, table, quiet, engine


def library_call(fn):
    """Turn CuratorError (and an OSError, e.g. an --out that cannot be written) into one
    line on stderr and exit code 1 (done once, here)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .errors import CuratorError

        try:
            return fn(*args, **kwargs)
        except CuratorError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:  # a path given that cannot be read or written: not a bug
            where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
            raise click.ClickException(" ".join(f"{exc.strerror or exc}{where}".split())) from None

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


class Command(click.Command):
    """A command whose summary in ``curator --help`` is its whole first paragraph, never
    cut short with "…" (click's default cuts at 45 characters)."""

    def get_short_help_str(self, limit: int = 45) -> str:
        if self.short_help:
            return self.short_help
        return " ".join(inspect.cleandoc(self.help or "").split("\n\n")[0].split())


class Group(click.Group):
    command_class = Command


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option("--id-column", default="id", show_default=True, help="Parquet column of row ids.")
@click.option("--vector-column", default="embedding", show_default=True,
              help="Parquet column of the vectors (list or fixed-size list of floats).")
@click.option("--sample-column", default="sample_id", show_default=True,
              help="Parquet column that pairs rows (an image and its captions share it).")
@click.option("--modality-column", default="modality", show_default=True,
              help="Parquet column of each row's modality (image, text, …).")
@click.option("--on-duplicate", type=click.Choice(["error", "skip", "replace"]), default="error",
              show_default=True, help="Ids already in the table: refuse, skip them, or replace them.")
@click.option("--generate-ids", is_flag=True, help="Parquet without ids: name rows FILE:ROW.")
@click.option("--ids", type=click.Path(), help="npy/npz: a text file (one id a line) or parquet of ids.")
@click.option("--metadata", type=click.Path(), help="npy/npz: a parquet of metadata aligned by row.")
@click.option("--score/--no-score", default=True, show_default=True,
              help="--no-score: bulk load, leave new rows for one later refresh.")
@json_option
@click.pass_obj
@library_call
def ingest(obj, sources, as_json, **options):
    """Add raw embeddings from parquet, npy/npz or clip-retrieval files.

    SOURCES: parquet files or folders, .npy/.npz files, clip-retrieval folders (img_emb/,
    text_emb/, metadata/). Metadata columns the table lacks are added to it.
    """
    from .api import ingest as run

    emit(run(list(sources), db=obj.db, table=obj.table, quiet=obj.quiet, **options), as_json)


@cli.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--arch", default="ViT-B-32", show_default=True, help="open_clip architecture.")
@click.option("--pretrained", default=None,
              help="open_clip pretrained tag (e.g. laion2b_s34b_b79k) or a local checkpoint file; "
                   "without it the weights are random (a notice says so) and the embeddings "
                   "carry no meaning.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, mps.")
@click.option("--batch-size", default=64, show_default=True, type=int,
              help="Images or captions per forward pass.")
@click.option("--num-workers", default=None, type=int, help="Image decoding workers.")
@click.option("--strict", is_flag=True, help="A corrupt image is an error instead of skipped.")
@click.option("--image-column", default="image", show_default=True,
              help="CSV/parquet column of image paths.")
@click.option("--caption-column", default="caption", show_default=True,
              help="CSV/parquet column of captions.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of randomly initialised weights (no --pretrained).")
@click.option("--commit-every", default=None, type=int,
              help="Ingest every N rows, so a killed run keeps its progress (default: one transaction).")
@json_option
@click.pass_obj
@library_call
def encode(obj, sources, as_json, **options):
    """Encode images and captions with OpenCLIP, then ingest them.

    SOURCES: image folders or files, caption files (.txt, one a line; CSV/parquet with a
    caption column), CSV/parquet tables of image paths and captions, webdataset .tar
    shards. The raw (unnormalised) embeddings are ingested in one transaction.
    """
    from .api import encode as run

    emit(run(list(sources), db=obj.db, table=obj.table, quiet=obj.quiet, **options), as_json)


@cli.command()
@json_option
@click.pass_obj
@library_call
def stats(obj, as_json):
    """Per-modality statistics, staleness bounds included.

    n, dim, model, statistics version, norms, and max_staleness: a proven bound on how far
    any stored conformity is from its exact value now.
    """
    from .api import stats as run

    emit(run(db=obj.db, table=obj.table), as_json)


@cli.command()
@click.option("--tolerance", default=0.0, show_default=True, type=float,
              help="Rescore rows for which any counted column's staleness bound exceeds this.")
@click.option("--columns", default=None,
              help="Comma-separated score columns whose bounds count (default: all). Without "
                   "loglik, rescored rows skip the whitening and hold no loglik.")
@click.option("--reference", default=None,
              help="Instead: write ref_* scores against this table's statistics.")
@json_option
@click.pass_obj
@library_call
def refresh(obj, tolerance, columns, reference, as_json):
    """Rescore the rows whose staleness bounds exceed --tolerance.

    A row is rescored when the bound of any counted score column (--columns, default all)
    exceeds --tolerance; its samples are rescored whole, in one commit. With --reference
    TABLE: write ref_* scores against that table's statistics instead.
    """
    from .api import refresh as run

    emit(run(db=obj.db, table=obj.table, tolerance=tolerance, columns=columns, reference=reference,
             quiet=obj.quiet, engine=obj.engine), as_json)


@cli.command()
@click.option("--k", "k", required=True, type=int, help="Clusters per modality.")
@click.option("--modality", default=None, help="Only this modality (default: each).")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the k-means++ start and the training sample.")
@click.option("--sample", default=None, type=int,
              help="Rows to train on (default: all up to 200,000).")
@click.option("--iterations", default=25, show_default=True, type=int,
              help="Most k-means iterations.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@json_option
@click.pass_obj
@library_call
def cluster(obj, as_json, **options):
    """Concept clusters per modality (spherical k-means).

    Writes cluster and cluster_size (the concept's frequency).
    """
    from .api import cluster as run

    emit(run(db=obj.db, table=obj.table, quiet=obj.quiet, engine=obj.engine, **options), as_json)


@cli.command()
@click.option("--eps", required=True, type=float, help="Near duplicates: cosine ≥ 1 − eps.")
@click.option("--modality", default=None, help="Only this modality (default: each).")
@click.option("--keep", type=click.Choice(["least-conformity", "most-conformity", "best-alignment",
                                           "random"]), default="least-conformity", show_default=True,
              help="Which member of a group is kept (the others get is_duplicate).")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the search partitions and of --keep random.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@json_option
@click.pass_obj
@library_call
def dedupe(obj, as_json, **options):
    """Near-duplicate groups: writes dup_group and is_duplicate.

    Rows with cosine ≥ 1 − eps are one group; all but the kept member are flagged.
    """
    from .api import dedupe as run

    emit(run(db=obj.db, table=obj.table, quiet=obj.quiet, engine=obj.engine, **options), as_json)


@cli.command()
@click.option("--cap", required=True, type=int, help="MetaCLIP threshold t: keep min(1, t/count).")
@click.option("--by", default="cluster", show_default=True,
              help="cluster, conformity, or any metadata COLUMN.")
@click.option("--bins", default=20, show_default=True, type=int, help="Conformity bins (--by conformity).")
@click.option("--modality", default=None,
              help="Per sample: the modality whose row decides (default: image when the table "
                   "has image rows, else its only modality). Per row: decide only its rows.")
@click.option("--per", type=click.Choice(["sample", "row"]), default="sample", show_default=True,
              help="sample: one decision per sample, given to all its rows; row: each row alone.")
@click.option("--where", default=None,
              help="PRED: count and sample among the rows passing it only; failing rows get false.")
@click.option("--into", default="rebalance_keep", show_default=True,
              help="Boolean column to write (added when missing), so several balances coexist.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the keep draws.")
@json_option
@click.pass_obj
@library_call
def rebalance(obj, as_json, **options):
    """MetaCLIP-style frequency caps: writes rebalance_keep (or --into).

    \b
    A group (cluster, COLUMN value or conformity bin) of c samples keeps each with
    probability min(1, cap/c), seeded by the deciding row's id (reproducible).
    Per sample (default): a sample is decided once by its row in --modality that passes
    --where (the smallest id if several); all its rows get that decision, and rows failing
    --where get false. A sample with no such row (captions without an image, or an
    image failing --where) gets false on every row. A row without sample_id is a sample.
    Per row: each row of --modality (all when unset) is decided alone; failing rows
    get false; other modalities keep their value.
    """
    from .api import rebalance as run

    emit(run(db=obj.db, table=obj.table, engine=obj.engine, **options), as_json)


@cli.command()
@click.option("--eps", default=0.0, show_default=True, type=float,
              help="Count other partners with cosine ≥ own cosine − eps.")
@click.option("--where", default=None, help="Only these rows: counted and counted against.")
@click.option("--recall", default=0.995, show_default=True, type=float,
              help="Large tables: calibrated pair recall of the skip rule (1 = exact).")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the calibration and audit samples and the k-means.")
@json_option
@click.pass_obj
@library_call
def negatives(obj, as_json, **options):
    """False negatives per row: writes fn_count and fn_rate."""
    from .api import negatives as run

    emit(run(db=obj.db, table=obj.table, quiet=obj.quiet, engine=obj.engine, **options), as_json)


@cli.command()
@click.argument("sql")
@click.option("--format", type=click.Choice(["table", "csv", "json", "parquet"]),
              default="table", show_default=True,
              help="How to print the rows, or write them with --out (parquet needs --out).")
@click.option("--out", type=click.Path(), help="Write the result to this file.")
@json_option
@click.pass_obj
@library_call
def query(obj, sql, format, out, as_json):
    """Run one read-only DuckDB SQL query over the database.

    SQL: one SELECT statement. Every table is visible by its name, plus the view `pairs`
    (one row per caption with its image). --json prints one object with the rows.
    """
    from .api import query as run
    from .io.query import render, rows_json

    result = run(sql, db=obj.db, table=obj.table, format=format, out=out)
    if as_json:
        click.echo(json.dumps(rows_json(result, out), default=_jsonable))
    elif not out:
        click.echo(render(result, format), nl=False)


@cli.command()
@click.option("--out", required=True, type=click.Path(), help="Folder to write.")
@click.option("--where", default=None,
              help="PRED: one boolean expression over the table's columns (DuckDB syntax).")
@click.option("--format", "format", type=click.Choice(["parquet", "jsonl", "csv", "npy", "lance"]),
              default="parquet", show_default=True,
              help="File format (npy: the clip-retrieval layout).")
@click.option("--unit", type=click.Choice(["row", "sample", "pair"]), default="row",
              show_default=True, help="What a record is; see above.")
@click.option("--overwrite", is_flag=True, help="Replace an existing export folder.")
@click.option("--table-version", type=int, default=None,
              help="Export this table version (default: the latest).")
@json_option
@click.pass_obj
@library_call
def export(obj, as_json, **options):
    """Write selected rows and a manifest that reproduces them.

    \b
    --unit row: exactly the rows matching --where.
    --unit sample: a sample is exported when its image row matches and, if it has
      captions, at least one caption matches; it exports the image and the matching
      captions only. A sample with no image row exports its matching captions.
    --unit pair: one record per (image, caption) of a sample where both rows match:
      sample_id, image_id, text_id, the metadata columns (caption, url, path...; the
      caption's value, else the image's), every score prefixed image_/text_, and both
      vectors. With --format npy: aligned img_emb/text_emb lines (clip-retrieval
      layout) that `curator ingest` reads back as the same pairs.
    """
    from .api import export as run

    emit(run(db=obj.db, table=obj.table, engine=obj.engine, **options), as_json)


@cli.command()
@click.option("--out", required=True, type=click.Path(), help="Folder for index.html, PNGs, report.json.")
@click.option("--sample", "sample", default=5000, show_default=True, type=int,
              help="Rows per modality for the pairwise and plotted parts.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the row sample.")
@json_option
@click.pass_obj
@library_call
def report(obj, as_json, **options):
    """HTML report of the double-ellipsoid geometry of the table.

    Writes index.html, a PNG per figure and report.json into --out; the table is unchanged.
    """
    from .api import report as run

    emit(run(db=obj.db, table=obj.table, **options), as_json)


@cli.command()
@click.option("--reference", required=True, help="The reference table (a trusted corpus).")
@click.option("--db-reference", default=None, help="Its database (default: --db).")
@click.option("--out", default=None, type=click.Path(), help="Folder for index.html, PNGs, compare.json.")
@click.option("--k", "k", default=16, show_default=True, type=int,
              help="Clusters trained on the reference when it has none stored.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of those clusters (sample and k-means).")
@click.option("--top", default=10, show_default=True, type=int, help="Atypical rows listed per modality.")
@json_option
@click.pass_obj
@library_call
def compare(obj, as_json, **options):
    """Conformity and concept frequencies against a reference table."""
    from .api import compare as run

    emit(run(db=obj.db, table=obj.table, quiet=obj.quiet, engine=obj.engine, **options), as_json)


@cli.command()
@click.option("--repair", is_flag=True, help="Rebuild statistics and rescore what drifted.")
@json_option
@click.pass_obj
@library_call
def verify(obj, repair, as_json):
    """Recompute statistics and scores from the rows; report drift.

    Exits 1 when something drifted (and --repair was not given).
    """
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
@click.option("--out", default="curator-demo", show_default=True, type=click.Path(),
              help="Folder for the database, sources, export and report (replaced if a demo).")
@click.option("--samples", "--rows", "samples", default=4000, show_default=True, type=int,
              help="Synthetic image-text samples (rows are ~4x this; --rows is an old name).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the data and every step.")
@json_option
@click.pass_obj
@library_call
def demo(obj, as_json, **options):
    """The whole pipeline on seeded synthetic data, with a report.

    Synthetic sources, ingest in three batches, refresh, cluster, dedupe, rebalance, an
    export and the report, into --out.
    """
    from .api import demo as run

    emit(run(quiet=obj.quiet, **options), as_json)


@cli.command()
@click.argument("name")
@click.option("--ids", type=click.Path(), default=None,
              help="File of ids: one a line, or a parquet/csv with an id column.")
@click.option("--where", default=None, help="SQL predicate (DuckDB) naming the rows instead.")
@click.option("--remove", is_flag=True, help="Set the tag to false for these rows.")
@json_option
@click.pass_obj
@library_call
def tag(obj, name, as_json, **options):
    """Mark rows in the boolean column NAME (true; false with --remove)."""
    from .api import tag as run

    emit(run(name, db=obj.db, table=obj.table, engine=obj.engine, **options), as_json)


@cli.command()
@click.option("--method", type=click.Choice(["gap", "pca", "umap"]), default="gap",
              show_default=True, help="gap: the report's two-shells view; umap: umap-learn.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="umap: seed of the sample and of the fit.")
@click.option("--sample", default=10_000, show_default=True, type=int,
              help="umap: rows to fit on (the rest are placed by transform).")
@json_option
@click.pass_obj
@library_call
def project(obj, as_json, **options):
    """2-D coordinates of every row: writes proj_x, proj_y."""
    from .api import project as run

    emit(run(db=obj.db, table=obj.table, engine=obj.engine, **options), as_json)


@cli.command()
@click.option("--where", default=None, help="SQL predicate (DuckDB): browse only these rows.")
@click.option("--sample", default=1_000_000, show_default=True, type=int,
              help="At most this many rows (a seeded sample past it).")
@click.option("--port", default=0, show_default=True, type=int, help="0: a free port.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve on (0.0.0.0: every interface).")
@click.option("--no-open", is_flag=True, help="Do not open a browser tab.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the sample past --sample rows.")
@click.option("--timeout", default=None, type=float, help="Stop serving after this many seconds.")
@click.pass_obj
@library_call
def browse(obj, **options):
    """A local web app: scatter, filters, table; selection -> tag.

    Serves until Ctrl-C (or --timeout): a Datashader scatter of proj_x/proj_y coloured
    by any column, linked histograms of the scores, a --where filter box, the selection
    as a table with thumbnails, a predicate, a tag or an ids file, and one row's
    neighbours, duplicate group and pair. Needs pip install 'clip-curator[browse]'."""
    from .api import browse as run

    run(db=obj.db, table=obj.table, quiet=obj.quiet, **options)


def main(argv=None):
    """Console entry point: tune the allocator before Lance allocates, then run."""
    from .store.database import tune_allocator

    tune_allocator()
    cli.main(args=argv, prog_name="curator")


if __name__ == "__main__":
    main()
