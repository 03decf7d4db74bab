"""Administration: the stack (database schema, `up` / `down`, worker, beat, API server), API clients and their
tokens, console users, model versions and retraining, the periodic sweep and retention."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from bloodcell_core.cli import context
from bloodcell_core.cli.group import BloodcellGroup, fail
from bloodcell_core.cli.options import EXISTING_DIR, json_option
from bloodcell_core.service.results import ModelVersionInfo
from bloodcell_core.service.states import Scope, TrainingRunStatus


@click.group(cls=BloodcellGroup)
def db() -> None:
    """Database schema (Alembic migrations in migrations/)."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Migrate BLOODCELL_DATABASE_URL to the latest schema (safe to run again)."""
    from bloodcell_core.config import masked_url
    from bloodcell_core.service.db import upgrade

    settings = context.settings()
    upgrade(settings.database_url)
    click.echo(f"database migrated: {masked_url(settings.database_url)}")


@click.command("up")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes to start.")
@click.option("--no-flower", is_flag=True, help="Do not start Flower.")
@click.option("--no-api", is_flag=True, help="Do not start the HTTP API.")
def start_stack(workers: int, no_flower: bool, no_api: bool) -> None:
    """Start the local stack in the background on embedded defaults: redis-server, SQLite
    (migrated), the shipped model as production, Celery worker(s), Flower and the HTTP API."""
    from bloodcell_core.cli.stack import up

    info = up(context.settings(), workers=workers, flower=not no_flower, api=not no_api)
    width = max(map(len, info))
    for key, value in info.items():
        click.echo(f"{key:>{width}}: {value}")


@click.command("down")
def stop_stack() -> None:
    """Stop the local stack started by `bloodcell up`."""
    from bloodcell_core.cli.stack import down

    stopped = down(context.settings())
    click.echo(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


def _become(command: list[str]) -> None:
    """Replace this process with COMMAND: a foreground server's signals and exit status are its own."""
    os.execv(command[0], command)


@click.command("worker")
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes (each loads the model once)."
)
@click.option("--name", default="worker", show_default=True, help="Worker name (unique per machine).")
def run_worker(concurrency: int, name: str) -> None:
    """Run a Celery worker in the foreground (for more machines: same BLOODCELL_* settings).

    BLOODCELL_WORKER_DEVICE=gpu makes it take the classify.gpu queue too.
    """
    from bloodcell_core.cli.stack import worker_command

    _become(worker_command(context.settings(), concurrency=concurrency, name=name))


@click.command("beat")
def run_beat() -> None:
    """Run Celery beat in the foreground: it sends the periodic sweep (see `bloodcell sweep --help`) to
    the webhooks queue every BLOODCELL_SWEEP_INTERVAL_S seconds. Run one per deployment (`up` starts one);
    its schedule file is BLOODCELL_HOME/run/beat-schedule."""
    from bloodcell_core.cli.stack import beat_command

    _become(beat_command(context.settings()))


@click.command("api")
@click.option("--host", help="Default: BLOODCELL_API_HOST (127.0.0.1).")
@click.option("--port", type=int, help="Default: BLOODCELL_API_PORT (8000).")
def serve_api(host: str | None, port: int | None) -> None:
    """Serve the HTTP API in the foreground (OpenAPI docs at /docs)."""
    from bloodcell_core.cli.stack import api_command

    _become(api_command(context.settings(), host, port))


def _echo_counts(counts: dict[str, object], as_json: bool) -> None:
    """A command's counts: one JSON object, or ``key: value`` lines."""
    if as_json:
        click.echo(json.dumps(counts))
        return
    for key, value in counts.items():
        click.echo(f"{key}: {value}")


@click.command()
@json_option("Print the counts as JSON.")
def sweep(as_json: bool) -> None:
    """Run the periodic sweep once, here and now (Celery beat runs it on a worker every
    BLOODCELL_SWEEP_INTERVAL_S seconds):

    \b
    - webhook deliveries still pending BLOODCELL_SWEEP_WEBHOOK_AGE_S seconds after their attempt was due
      (their message was lost, e.g. Redis was down) are handed to the webhooks queue again; one waiting on
      its retry or being sent is left alone;
    - files of the file image store (BLOODCELL_HOME/images on this machine) that no database row references
      and that are older than BLOODCELL_SWEEP_ORPHAN_AGE_S seconds (left by failed submissions) are removed.

    Prints what it did: webhooks_requeued, webhooks_not_sent (the broker refused them), orphans_removed,
    orphan_bytes.
    """
    _echo_counts(context.client().sweep(), as_json)


@click.command()
@click.option("--days", type=float, help="Purge samples submitted more than this many days ago [BLOODCELL_RETENTION_DAYS].")
@click.option("--dry-run", is_flag=True, help="Only count the samples and cells that would be purged.")
@json_option("Print the counts as JSON.")
def retention(days: float | None, dry_run: bool, as_json: bool) -> None:
    """Purge the classified samples older than the laboratory keeps them: their cells, reports, reviews and
    webhook deliveries, and the images (rows and files) and predictions no kept sample uses. The audit log
    stays whole, and each purged sample gets a sample.purged event with its final report. Run it from cron
    (or by hand) on one machine that reaches the database and the image store.

    Prints: cutoff, dry_run, samples, cells, images, image_bytes, predictions.
    """
    from bloodcell_core.service.retention import purge_older_than

    age = days if days is not None else context.settings().retention_days
    if not age:
        fail("no retention age: set BLOODCELL_RETENTION_DAYS or give --days")
    _echo_counts(purge_older_than(context.migrated_settings(), age, context.actor(), dry_run=dry_run).as_dict(), as_json)


@click.group(cls=BloodcellGroup)
def tokens() -> None:
    """HTTP API clients and their tokens (stored hashed; shown once)."""


@tokens.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice([scope.value for scope in Scope]),
    help="Repeat for several scopes; `metrics` is for a Prometheus server (GET /metrics only).",
)
@click.option("--webhook-url", help="POSTed a signed event when the client's samples are classified or signed off.")
def tokens_create(name: str, scopes: tuple[str, ...], webhook_url: str | None) -> None:
    """Create API client NAME and print its token (and webhook secret) once."""
    from bloodcell_core.service.api_clients import create_client

    with context.transaction() as session:
        created = create_client(session, name=name, scopes=list(scopes), webhook_url=webhook_url, actor=context.actor())
    shown = {
        "name": created.name,
        "token": created.token,
        "scopes": created.scopes,
        "webhook_url": created.webhook_url,
        "webhook_secret": created.webhook_secret,
    }
    click.echo(json.dumps(shown, indent=2))


@tokens.command("list")
@json_option(help=None)
def tokens_list(as_json: bool) -> None:
    """List API clients (token prefixes only)."""
    from bloodcell_core.service.api_clients import list_clients

    with context.transaction() as session:
        rows = list_clients(session)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
        click.echo(f"{row['name']:<24}{row['token_prefix']}...  {','.join(row['scopes']):<28}{state}")


@tokens.command("revoke")
@click.argument("name")
def tokens_revoke(name: str) -> None:
    """Revoke API client NAME: its token stops working at once."""
    from bloodcell_core.service.api_clients import revoke_client

    with context.transaction() as session:
        revoke_client(session, name=name, actor=context.actor())
    click.echo(f"revoked {name}")


@click.group(cls=BloodcellGroup)
def users() -> None:
    """Users of the web review console (passwords stored as argon2 hashes).

    \b
    Roles, each allowed everything of those before it:
      technologist   review cells, sign off samples without a blast flag
      supervisor     also sign off samples with a blast flag (BLOODCELL_SIGNOFF_BLAST_ROLE)
      admin          everything
    """


def _new_password(from_stdin: bool) -> str:
    """The first line of standard input with --password-stdin, else typed twice without echo."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password: str = click.prompt("Password (at least 10 characters)", hide_input=True, confirmation_prompt=True)
    return password


_password_stdin_option = click.option(
    "--password-stdin",
    "password_stdin",
    is_flag=True,
    help="Read the password from the first line of standard input instead of prompting.",
)
_ROLES = click.Choice(["technologist", "supervisor", "admin"])


@users.command("create")
@click.argument("name")
@click.option("--role", required=True, type=_ROLES, help="What the user may do in the review console.")
@_password_stdin_option
def users_create(name: str, role: str, password_stdin: bool) -> None:
    """Create user NAME (letters, digits and . _ -) with ROLE; the password is asked for twice unless --password-stdin."""
    from bloodcell_core.service.users import create_user

    password = _new_password(password_stdin)
    with context.transaction() as session:
        row = create_user(session, name=name, role=role, password=password, actor=context.actor())
    click.echo(f"created user {row['name']} ({row['role']})")


@users.command("list")
@json_option()
def users_list(as_json: bool) -> None:
    """List users with their role, state and last login."""
    from bloodcell_core.service.users import list_users

    with context.transaction() as session:
        rows = list_users(session)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        state = "disabled" if row["disabled"] else "active"
        click.echo(f"{row['name']:<24}{row['role']:<14}{state:<10}last login {row['last_login_at'] or 'never'}")


@users.command("disable")
@click.argument("name")
def users_disable(name: str) -> None:
    """Disable user NAME: its browser sessions end at once and it can no longer log in."""
    from bloodcell_core.service.users import disable_user

    with context.transaction() as session:
        disable_user(session, name=name, actor=context.actor())
    click.echo(f"disabled {name}")


@users.command("enable")
@click.argument("name")
def users_enable(name: str) -> None:
    """Let disabled user NAME log in again, with the password it had."""
    from bloodcell_core.service.users import enable_user

    with context.transaction() as session:
        enable_user(session, name=name, actor=context.actor())
    click.echo(f"enabled {name}")


@users.command("set-role")
@click.argument("name")
@click.argument("role", type=_ROLES)
def users_set_role(name: str, role: str) -> None:
    """Give user NAME another ROLE; its browser sessions end."""
    from bloodcell_core.service.users import set_role

    with context.transaction() as session:
        set_role(session, name=name, role=role, actor=context.actor())
    click.echo(f"{name} is now {role}")


@users.command("set-password")
@click.argument("name")
@_password_stdin_option
def users_set_password(name: str, password_stdin: bool) -> None:
    """Set a new password for user NAME (asked for twice unless --password-stdin); its browser sessions end."""
    from bloodcell_core.service.users import set_password

    password = _new_password(password_stdin)
    with context.transaction() as session:
        set_password(session, name=name, password=password, actor=context.actor())
    click.echo(f"password set for {name}")


@click.command()
@click.option("--model", "model_name", required=True, help="Model plugin to train.")
@click.option("--data", "data_dir", required=True, type=EXISTING_DIR, help="Folder-per-class training data, readable by the workers.")
@click.option("--epochs", type=click.IntRange(min=1))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-per-class", type=click.IntRange(min=3))
@click.option("--include-reviewed", is_flag=True, help="Add the cells technologists relabelled to the training data.")
@click.option("--wait", is_flag=True, help="Wait for the candidate version.")
def retrain(
    model_name: str, data_dir: Path, epochs: int | None, seed: int, max_per_class: int | None, include_reviewed: bool, wait: bool
) -> None:
    """Queue a retraining run; the result is registered as a candidate model version."""
    parameters = (
        {"seed": seed}
        | ({"epochs": epochs} if epochs else {})
        | ({"max_per_class": max_per_class} if max_per_class else {})
        | ({"include_reviewed": True} if include_reviewed else {})
    )
    client = context.client()
    run_id = client.retrain(model_name, str(data_dir.resolve()), parameters)
    click.echo(f"training run {run_id} queued")
    if wait:
        result = client.wait_training(run_id)
        click.echo(json.dumps(result.model_dump(mode="json")))
        if result.status != TrainingRunStatus.DONE:
            sys.exit(1)


@click.group(cls=BloodcellGroup, default_command="list", no_args_is_help=False)
def models() -> None:
    """Model versions: list (default), register, promote, evaluate, evaluation-set, shadow."""


@models.command("list")
@json_option(help=None)
def models_list(as_json: bool) -> None:
    """List registered model versions with their status and test metrics."""
    rows: list[ModelVersionInfo] = context.client(http=True).models()
    if as_json:
        click.echo(json.dumps([row.model_dump(mode="json") for row in rows], indent=2))
        return
    for row in rows:
        accuracy = "-" if row.test_accuracy is None else f"{row.test_accuracy:.4f}"
        click.echo(f"{row.version:<32}{row.status:<12}test accuracy {accuracy}  {row.created_at}")


@models.command("promote")
@click.argument("version")
@click.option("--force", is_flag=True, help="Promote even if the gate refuses (needs --reason; audited).")
@click.option("--reason", default="", help="Why the gate is overridden.")
def models_promote(version: str, force: bool, reason: str) -> None:
    """Make VERSION the production model if it beats production on the evaluation set
    (BLOODCELL_EVALUATION_SET) by BLOODCELL_PROMOTION_MARGIN in accuracy and macro-F1.
    Workers pick it up on their next sample."""
    click.echo(f"production model: {context.client().promote(version, actor=context.actor(), force=force, reason=reason)}")


@models.command("evaluate")
@click.argument("version")
@click.option("--set", "set_name", help="Evaluation set (default: BLOODCELL_EVALUATION_SET).")
def models_evaluate(version: str, set_name: str | None) -> None:
    """Score VERSION on a registered evaluation set through the training queue; kept for the gate."""
    client = context.client()
    click.echo(json.dumps(client.evaluate(version, set_name or client.settings.evaluation_set)))


@models.command("register")
@click.argument("model_dir", type=EXISTING_DIR)
def models_register(model_dir: Path) -> None:
    """Register MODEL_DIR (e.g. trained with `bloodcell train`, or recalibrated) as a candidate version.

    The directory must stay where it is and be readable by every worker (BLOODCELL_MODELS_DIR is a good place).
    """
    click.echo(f"candidate: {context.client().register(str(model_dir.resolve()), actor=context.actor())}")


@models.command("evaluation-set")
@click.argument("name")
@click.argument("data_dir", type=EXISTING_DIR)
def models_evaluation_set(name: str, data_dir: Path) -> None:
    """Register DATA_DIR (folder-per-class) as the fixed evaluation set NAME; its images are fingerprinted."""
    click.echo(json.dumps(context.client().register_evaluation_set(name, str(data_dir), actor=context.actor())))


@models.command("shadow")
@click.argument("version")
def models_shadow(version: str) -> None:
    """How candidate VERSION's shadow predictions (BLOODCELL_SHADOW=1) compare with production's on live cells."""
    click.echo(json.dumps(context.client().shadow_report(version), indent=2))


COMMANDS: list[click.Command] = [
    db,
    start_stack,
    stop_stack,
    run_worker,
    run_beat,
    serve_api,
    sweep,
    retention,
    tokens,
    users,
    retrain,
    models,
]
