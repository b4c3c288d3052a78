"""`medcloud datasets build-manifest` and `medcloud datasets upload`: local folders and object storage, no server.

Exit codes (scripts may rely on them):
    0  done
    1  bad input: unmatched labels, an unreadable or missing file, no manifest, a malformed URL or option
    3  storage unreachable or refused (wrong key, no permission, endpoint down)
    130  upload interrupted (Ctrl-C): run it again to resume
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_STORAGE = 3
EXIT_INTERRUPTED = 130

_BUILD_EPILOG = """\
Matching rules for labels (see docs/client.md):
  imagesTr/x.nii.gz  <->  labelsTr/x.nii.gz   (labelsXX mirrors imagesXX; --labels-dir names another folder)
  x.nii.gz           <->  x_seg.nii.gz, x_label.nii.gz, x_labels.nii.gz or x_mask.nii.gz next to it
A DICOM series folder (.dcm files, or files without extension that pydicom reads) is one image per series.

example:
  medcloud datasets build-manifest ./spleen --labels-dir labelsTr
  medcloud datasets build-manifest ./scans --ignore-unmatched --json
exit codes: 0 ok, 1 bad input (unmatched labels, unreadable file); nothing is written on error.
"""

_UPLOAD_EPILOG = """\
Credentials come from the options or, when not given, from the usual variables:
  s3://   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3)
  az://   AZURE_STORAGE_ACCOUNT, AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN, AZURE_STORAGE_BLOB_ENDPOINT
  gs://   GOOGLE_APPLICATION_CREDENTIALS (a service-account key file)
Secrets are never printed. Prefer the variables to --secret (a command line is visible to other users).
Files already uploaded (same size and checksum) are skipped, so running the command again after an
interruption uploads only what is missing; manifest.json goes last.

example:
  medcloud datasets upload ./spleen s3://my-bucket/spleen --endpoint-url http://127.0.0.1:9000
  AZURE_STORAGE_ACCOUNT=acct AZURE_STORAGE_KEY=... medcloud datasets upload ./spleen az://container/spleen
  medcloud datasets upload ./spleen gs://my-bucket/spleen --key-file sa.json
exit codes: 0 ok, 1 bad input (no manifest, missing or unreadable file), 3 storage unreachable or refused,
130 interrupted (run it again to resume).
"""


def register(datasets_sub: argparse._SubParsersAction) -> None:
    """Add `build-manifest` and `upload` to the `medcloud datasets` subcommands."""
    build = datasets_sub.add_parser(
        "build-manifest",
        help="write manifest.json for a folder of images (NIfTI, DICOM series, PNG/JPEG) and labels",
        description="Write FOLDER/manifest.json, the manifest an object-storage dataset needs.",
        epilog=_BUILD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument("folder", type=Path, metavar="FOLDER")
    build.add_argument("--labels-dir", help="folder (relative to FOLDER) holding the labels, mirroring the images")
    build.add_argument("--ignore-unmatched", action="store_true", help="leave out labels that match no image")
    build.add_argument("-o", "--output", type=Path, help="where to write the manifest (default FOLDER/manifest.json)")
    build.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    build.set_defaults(func=cmd_build_manifest)

    upload = datasets_sub.add_parser(
        "upload",
        help="copy a folder with its manifest to s3://, az:// or gs:// (resumable)",
        description="Copy FOLDER (with FOLDER/manifest.json, uploaded last) to object storage at URL.",
        epilog=_UPLOAD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    upload.add_argument("folder", type=Path, metavar="FOLDER")
    upload.add_argument("url", metavar="URL", help="s3://bucket/prefix, az://container/prefix or gs://bucket/prefix")
    upload.add_argument("--endpoint-url", help="a self-hosted store (MinIO, Azurite, a GCS emulator)")
    upload.add_argument("--key-id", help="S3 access key id, or Azure storage account name")
    upload.add_argument("--secret", help="S3 secret key, or Azure account key / SAS token (prefer the variables)")
    upload.add_argument(
        "--secret-env", metavar="VAR", help="environment variable holding the secret (instead of --secret)"
    )
    upload.add_argument("--key-file", type=Path, help="GCS service-account JSON key file")
    upload.add_argument("--json", action="store_true", help="print a JSON summary instead of progress")
    upload.set_defaults(func=cmd_upload)


def cmd_build_manifest(args: argparse.Namespace) -> int:
    """Build and write the manifest; print a summary."""
    from medcloud.client.manifest import ManifestError, plan_manifest, write_manifest

    try:
        result = plan_manifest(args.folder, labels=args.labels_dir, ignore_unmatched=args.ignore_unmatched)
        path = write_manifest(result.manifest, args.output or args.folder / "manifest.json")
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    summary = {
        "manifest": str(path),
        "images": len(result.manifest["data"]),
        "labeled": result.labeled,
        "ignored_labels": result.ignored_labels,
        "skipped_files": result.skipped_files,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"Wrote {path}: {summary['images']} images, {result.labeled} labeled.")
        if result.ignored_labels:
            print(f"Left out {len(result.ignored_labels)} unmatched labels: {', '.join(result.ignored_labels)}")
        if result.skipped_files:
            print(f"Skipped {len(result.skipped_files)} files that are not images: {', '.join(result.skipped_files)}")
    return EXIT_OK


def _secret(args: argparse.Namespace) -> str | None:
    """`--secret`, or the variable `--secret-env` names (missing → `UploadInputError`, naming the variable only)."""
    from medcloud.client.upload import UploadInputError

    if args.secret_env is None:
        return args.secret
    value = os.environ.get(args.secret_env)
    if not value:
        raise UploadInputError(f"The variable {args.secret_env} named by --secret-env is not set.")
    return value


def cmd_upload(args: argparse.Namespace) -> int:
    """Upload the folder; progress on stderr when it is a terminal, plain lines otherwise."""
    from medcloud.logs import quiet_storage_loggers

    quiet_storage_loggers()  # storage SDKs log every request at INFO; the user sees progress instead
    from medcloud.client.upload import (
        Credentials,
        LineProgress,
        StorageError,
        TerminalProgress,
        UploadInputError,
        upload_folder,
    )

    try:
        credentials = Credentials.from_options(
            key_id=args.key_id, secret=_secret(args), key_file=args.key_file, endpoint_url=args.endpoint_url
        )
        progress = None if args.json else (TerminalProgress() if sys.stderr.isatty() else LineProgress())
        report = upload_folder(args.folder, args.url, credentials=credentials, progress=progress)
    except UploadInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_STORAGE
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to upload what is missing", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(
            f"Uploaded {len(report.uploaded)} files ({report.uploaded_bytes} bytes), "
            f"skipped {len(report.skipped)} already there, to {report.url}."
        )
    return EXIT_OK
