"""`medcloud jobs list|create|watch|logs|cancel|download` (jobs live under their experiment)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medcloud.commands.api import add_command, client_for
from medcloud.commands.display_helpers import job_row
from medcloud.commands.output import EXIT_API, EXIT_OK, key_values, print_json, print_table, reports_errors

HEADERS = ("ID", "ACTION", "STATUS", "EPOCH", "KEY_METRIC", "NAME", "MODIFIED")


@reports_errors
def cmd_list(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        found = list(client.jobs(args.experiment))
    print_json(found) if args.json else print_table([job_row(j) for j in found], HEADERS)
    return EXIT_OK


def _ended(job, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    if args.json:
        print_json(job)
    return EXIT_OK if job.status == "Done" else EXIT_API


@reports_errors
def cmd_create(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        job = client.create_job(args.experiment, args.action, key_values(args.spec, "--spec"), name=args.name)
        if args.watch:
            return _ended(client.watch(job, out=sys.stderr), args)
    print_json(job) if args.json else print(job.id)
    return EXIT_OK


@reports_errors
def cmd_watch(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        job = client.watch(args.job, experiment=args.experiment, out=sys.stderr)
    if not args.json:
        print(f"{job.status}" + (f": {job.message}" if job.message else ""))
    return _ended(job, args)


@reports_errors
def cmd_logs(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        for line in client.logs(args.job, experiment=args.experiment, follow=args.follow):
            print(line, flush=True)
    return EXIT_OK


@reports_errors
def cmd_cancel(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        message = client.cancel(args.job, experiment=args.experiment)
    print_json({"message": message}) if args.json else print(message)
    return EXIT_OK


@reports_errors
def cmd_download(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        path = client.download(args.job, args.output, experiment=args.experiment)
    print_json({"file": str(path)}) if args.json else print(path)
    return EXIT_OK


def _job_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("experiment", metavar="EXPERIMENT")
    parser.add_argument("job", metavar="JOB")
    return parser


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `jobs` and its subcommands."""
    jobs = sub.add_parser("jobs", help="list, create, watch, follow the logs of, cancel, download jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")
    ls = add_command(jobs_sub, "list", "list an experiment's jobs", "medcloud jobs list 7c1d...", parents=[common])
    ls.add_argument("experiment", metavar="EXPERIMENT")
    ls.set_defaults(func=cmd_list)
    create = add_command(
        jobs_sub, "create", "start a train, batchinfer or annotation job (prints its id)",
        "medcloud jobs create 7c1d... train --spec epochs=2 --spec val_interval=1 --watch", parents=[common],
    )  # fmt: skip
    create.add_argument("experiment", metavar="EXPERIMENT")
    create.add_argument("action", choices=("train", "batchinfer", "annotation"))
    create.add_argument("--spec", action="append", metavar="KEY=VALUE", help="a specs entry (JSON value); repeat")
    create.add_argument("--name")
    create.add_argument("--watch", action="store_true", help="then watch it to its end (exit 1 unless Done)")
    create.set_defaults(func=cmd_create)
    watch = add_command(
        jobs_sub, "watch", "show a job's progress until it ends (exit 0 Done, 1 Error/Canceled)",
        "medcloud jobs watch 7c1d... 0a9f...", parents=[common],
    )  # fmt: skip
    _job_args(watch).set_defaults(func=cmd_watch)
    logs = add_command(jobs_sub, "logs", "print a job's log (-f: follow until the job ends)",
                       "medcloud jobs logs -f 7c1d... 0a9f...", parents=[common])  # fmt: skip
    _job_args(logs).add_argument("-f", "--follow", action="store_true")
    logs.set_defaults(func=cmd_logs)
    cancel = add_command(jobs_sub, "cancel", "cancel a Pending or Running job",
                         "medcloud jobs cancel 7c1d... 0a9f...", parents=[common])  # fmt: skip
    _job_args(cancel).set_defaults(func=cmd_cancel)
    download = add_command(jobs_sub, "download", "save a job's results as .tar.gz",
                           "medcloud jobs download 7c1d... 0a9f... -o results/", parents=[common])  # fmt: skip
    _job_args(download).add_argument(
        "-o", "--output", type=Path, default=Path("."), help="a .tar.gz file, or a folder (default .)"
    )
    download.set_defaults(func=cmd_download)
