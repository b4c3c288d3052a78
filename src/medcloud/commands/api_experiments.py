"""`medcloud experiments list|create|delete` and `medcloud infer`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medcloud.client import prompts
from medcloud.client.errors import ClientError
from medcloud.commands.api import add_command, client_for
from medcloud.commands.output import EXIT_OK, key_values, print_json, print_table, reports_errors, short_time


@reports_errors
def cmd_list(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        found = list(client.experiments(user_only=not args.all))
    if args.json:
        print_json(found)
    else:
        rows = [(e.id, e.name, e.network_arch, "yes" if e.realtime_infer else "no", short_time(e.last_modified))
                for e in found]  # fmt: skip
        print_table(rows, ("ID", "NAME", "ARCH", "REALTIME", "MODIFIED"))
    return EXIT_OK


def _labels(pairs: list[str] | None) -> dict[str, str]:
    return {k: str(v) for k, v in key_values(pairs, "--label").items()}


@reports_errors
def cmd_create(args: argparse.Namespace) -> int:
    bundle = args.bundle_url
    if bundle and "://" not in bundle and Path(bundle).exists():
        bundle = str(Path(bundle).resolve())
    model_params: dict[str, Any] = key_values(args.model_param, "--model-param")
    if args.override:
        model_params["override"] = key_values(args.override, "--override")
    if args.label:
        model_params["labels"] = _labels(args.label)
    fields: dict[str, Any] = {
        "description": args.description,
        "bundle_url": bundle,
        "train_datasets": args.train_dataset,
        "eval_dataset": args.eval_dataset,
        "inference_dataset": args.inference_dataset,
        "base_experiment": args.base_experiment,
        "realtime_infer": True if args.realtime else None,
        "model_params": model_params or None,
        **key_values(args.field, "--field"),
    }
    with client_for(args) as client:
        exp = client.create_experiment(args.name, args.arch, **fields)
    print_json(exp) if args.json else print(f"Created experiment {exp.id} ({exp.name}, {exp.network_arch})")
    return EXIT_OK


@reports_errors
def cmd_delete(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        for experiment_id in args.ids:
            client.delete_experiment(experiment_id)
            print_json({"deleted": experiment_id}) if args.json else print(f"Deleted experiment {experiment_id}")
    return EXIT_OK


def _point(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise ClientError(f"A point is I,J,K (three integers), got {text!r}.") from None
    if len(values) != 3:
        raise ClientError(f"A point is I,J,K (three integers), got {text!r}.")
    return values


def bundle_params(args: argparse.Namespace) -> dict[str, Any]:
    """`--param`, VISTA-3D's `--label-prompt/--points/--point-labels` and DeepEdit's `--click` as bundle_params."""
    params = key_values(args.param, "--param")
    if args.label_prompt is not None or args.points:
        points = [_point(p) for p in args.points or []]
        params.update(prompts.vista3d(args.label_prompt, points or None, args.point_labels))
    elif args.point_labels:
        raise ClientError("--point-labels needs --points.")
    clicks: dict[str, list[list[int]]] = {}
    for click in args.click or []:
        name, sep, point = click.partition("=")
        if not sep or not name:
            raise ClientError(f"--click takes LABEL=I,J,K, got {click!r}.")
        clicks.setdefault(name, []).append(_point(point))
    params.update(prompts.deepedit(clicks))
    return params


@reports_errors
def cmd_infer(args: argparse.Namespace) -> int:
    params = bundle_params(args)
    with client_for(args) as client:
        written = client.infer(args.experiment, args.image, dataset_id=args.dataset, out_dir=args.output, **params)
    if args.json:
        print_json({name: str(path) for name, path in written.items()})
    else:
        for path in written.values():
            print(path)
    return EXIT_OK


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `experiments` and `infer`."""
    exps = sub.add_parser("experiments", help="list, create, delete experiments")
    exps_sub = exps.add_subparsers(dest="experiments_command", required=True, metavar="COMMAND")
    ls = add_command(exps_sub, "list", "list your experiments (--all adds the base ones)",
                     "medcloud experiments list --all --json", parents=[common])  # fmt: skip
    ls.add_argument("--all", action="store_true", help="include base experiments (VISTA-3D, DeepEdit)")
    ls.set_defaults(func=cmd_list)
    create = add_command(
        exps_sub, "create", "create an experiment (with --realtime: returns once the model is warm)",
        "medcloud experiments create clf --arch monai_custom --bundle-url ./bundle.zip --train-dataset DS "
        "--eval-dataset DS --realtime --override output_filename=predictions.csv",
        parents=[common],
    )  # fmt: skip
    create.add_argument("name")
    create.add_argument("--arch", default="monai_custom", help="network_arch (monai_custom, monai_vista3d, ...)")
    create.add_argument("--bundle-url", help="a MONAI bundle (zip/tar URL or a path the server may read)")
    create.add_argument("--description", default="")
    create.add_argument("--train-dataset", action="append", metavar="DATASET", help="repeat for several")
    create.add_argument("--eval-dataset", metavar="DATASET")
    create.add_argument("--inference-dataset", metavar="DATASET")
    create.add_argument("--base-experiment", action="append", metavar="EXPERIMENT")
    create.add_argument("--realtime", action="store_true", help="serve it warm for `medcloud infer`")
    create.add_argument("--override", action="append", metavar="KEY=VALUE", help="model_params.override entry")
    create.add_argument("--label", action="append", metavar="INDEX=NAME", help="model_params.labels entry")
    create.add_argument("--model-param", action="append", metavar="KEY=VALUE", help="other model_params entry")
    create.add_argument("--field", action="append", metavar="KEY=VALUE", help="any other field of the body (JSON)")
    create.set_defaults(func=cmd_create)
    delete = add_command(exps_sub, "delete", "delete experiments (unloads their models)",
                         "medcloud experiments delete 7c1d...", parents=[common])  # fmt: skip
    delete.add_argument("ids", nargs="+", metavar="EXPERIMENT")
    delete.set_defaults(func=cmd_delete)

    infer = add_command(
        sub, "infer", "real-time inference: write the output files (CSV, NRRD...) into a folder",
        "medcloud infer 7c1d... img-0001 -o out/ --label-prompt 3\n"
        "  medcloud infer 7c1d... img-0001 --points 40,30,20 --points 10,10,10 --point-labels 1 0 --label-prompt 3\n"
        "  medcloud infer 9a2b... img-0001 --click spleen=40,30,20 --click background=5,5,5   # DeepEdit",
        parents=[common],
    )  # fmt: skip
    infer.add_argument("experiment", metavar="EXPERIMENT")
    infer.add_argument("image", metavar="IMAGE", help="an image id of the dataset, or an http(s) URL")
    infer.add_argument("-o", "--output", type=Path, default=Path("."), help="folder for the outputs (default .)")
    infer.add_argument("--dataset", help="the dataset the image id belongs to (default: the experiment's)")
    infer.add_argument("--param", action="append", metavar="KEY=VALUE", help="a bundle_params entry (JSON value)")
    infer.add_argument("--label-prompt", type=int, nargs="+", metavar="CLASS", help="VISTA-3D class indices")
    infer.add_argument("--points", action="append", metavar="I,J,K", help="VISTA-3D point (voxel indices); repeat")
    infer.add_argument("--point-labels", type=int, nargs="+", metavar="L", help="1 foreground, 0 background")
    infer.add_argument("--click", action="append", metavar="LABEL=I,J,K", help="DeepEdit click; repeat")
    infer.set_defaults(func=cmd_infer)
