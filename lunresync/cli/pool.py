"""``lunresync pool ...``: the pool directory's thin pool (docs/thin.md), on the pool
directly (over D-Bus: the Manager's GetThinPool and GrowThinPool)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from lunresync.errors import NotFound
from lunresync.storage.model import THIN_POOL_CREATE_HINT
from lunresync.storage.units import format_size
from lunresync.views import thin_pool_of

from .backend_choice import opened
from .base import CommandGroup
from .output import emit_json, show_record

if TYPE_CHECKING:
    from lunresync.provider import Provider

POOL_SHOW_KEYS = ("path", "active", "mode", "data_size", "data_used", "metadata_size",
                  "metadata_used", "block_size", "luns", "needs_check", "created")


@click.group(cls=CommandGroup)
def pool() -> None:
    """The pool's thin pool: create it, show its use, grow it, delete it."""


@pool.command("create-thin")
@click.option("--size", required=True,
              help="Data size, e.g. 64G (a sparse image: only written blocks take room).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def pool_create_thin(ctx: click.Context, size: str, as_json: bool) -> None:
    """Create the pool's thin pool; thin LUNs (lun create --thin) live on it."""
    with opened(ctx) as provider:
        provider.create_thin_pool(size)
        record = _record(provider)
    _say_sizes(record, as_json, f"created the thin pool {record['path']}:")


@pool.command("show")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def pool_show(ctx: click.Context, as_json: bool) -> None:
    """The thin pool's size and use."""
    with opened(ctx) as provider:
        record = _record(provider)
    show_record(record, as_json, POOL_SHOW_KEYS)


@pool.command("grow-thin")
@click.option("--size", required=True, help="The new data size, e.g. 128G (larger).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def pool_grow_thin(ctx: click.Context, size: str, as_json: bool) -> None:
    """Grow the thin pool online (lunresync also grows it by itself at its low-water
    mark while the file system has room)."""
    with opened(ctx) as provider:
        provider.grow_thin_pool(size)
        record = _record(provider)
    _say_sizes(record, as_json, "the thin pool has")


@pool.command("delete-thin")
@click.pass_context
def pool_delete_thin(ctx: click.Context) -> None:
    """Delete the thin pool and its images; refused while a LUN is on it."""
    with opened(ctx) as provider:
        provider.delete_thin_pool()
    click.echo("deleted the thin pool")


def _say_sizes(record: dict[str, Any], as_json: bool, lead: str) -> None:
    if as_json:
        emit_json(record)
    else:
        click.echo(f"{lead} {format_size(record['data_size'])} of data,"
                   f" {format_size(record['metadata_size'])} of metadata")


def _record(provider: Provider) -> dict[str, Any]:
    found = thin_pool_of(provider)
    if found is None:
        raise NotFound("this pool has no thin pool", hint=THIN_POOL_CREATE_HINT)
    return found
