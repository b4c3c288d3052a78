"""`Client`: one user's session with a MONAI Cloud API server (medcloud or the hosted service).

Example:
    >>> from medcloud.client import Client
    >>> client = Client("http://127.0.0.1:8000")          # key from MEDCLOUD_API_KEY / MONAI_API_KEY / a profile
    >>> ds = client.create_dataset("ct", "/data/ct")      # a folder with manifest.json, on the server's disk
    >>> outputs = client.infer(experiment_id, "image-id", out_dir="predictions")
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medcloud.client.errors import ClientError
from medcloud.client.jobs import JobCalls, experiment_id
from medcloud.client.outputs import parse_multipart, write_outputs
from medcloud.client.profiles import resolve
from medcloud.client.transport import Transport
from medcloud.client.types import Dataset, Experiment, NextImage, Workspace

PAGE_SIZE = 100


def _id(thing: Any) -> str:
    return str(getattr(thing, "id", thing))


class Client(JobCalls):
    """A logged-in user of one org on one server.

    Args:
        host: the server, e.g. `http://127.0.0.1:8000` or `https://api.monai.ngc.nvidia.com`.
        api_key: the user's API key; else `MEDCLOUD_API_KEY`, `MONAI_API_KEY` or the profile's.
        org: the org; else the profile's, else `iasixjqzw1hj` (the hosted service's default).
        profile: a profile stored by `medcloud login --profile NAME` (its values win over the environment).
        retries, backoff_s, timeout_s: see `Transport`.

    Raises:
        ClientError: no API key anywhere. Login happens on the first call (`Unauthorized` for a bad key).
    """

    def __init__(
        self,
        host: str | None = None,
        api_key: str | None = None,
        *,
        org: str | None = None,
        profile: str | None = None,
        retries: int = 4,
        backoff_s: float = 0.5,
        timeout_s: float = 300.0,
    ) -> None:
        settings = resolve(host, api_key, org, profile)
        self.transport = Transport(settings, retries=retries, backoff_s=backoff_s, timeout_s=timeout_s)
        self.host, self.org = settings.host, settings.org

    def __repr__(self) -> str:
        return f"Client(host={self.host!r}, org={self.org!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections."""
        self.transport.close()

    def login(self) -> str | None:
        """Log in now (otherwise the first call does) and return the user id."""
        self.transport.login()
        return self.transport.user_id

    def _pages(self, path: str, collection: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Every item of a list route, page by page (`skip`/`size`); one call when the server does not page."""
        skip = 0
        while True:
            body = self.transport.json("GET", path, params={**(params or {}), "skip": skip, "size": PAGE_SIZE})
            items = body.get(collection, []) if isinstance(body, dict) else []
            yield from items
            info = body.get("pagination_info") if isinstance(body, dict) else None
            skip += len(items)
            if not info or not items or skip >= int(info.get("total_records", 0)):
                return

    # datasets
    def datasets(self, **filters: str) -> Iterator[Dataset]:
        """Every dataset of the caller (filters: `name`, `type`, `format`; a leading `!` negates)."""
        for raw in self._pages("datasets", "datasets", filters):
            yield Dataset.from_api(raw)

    def dataset(self, dataset_id: str) -> Dataset:
        """One dataset."""
        return Dataset.from_api(self.transport.json("GET", f"datasets/{dataset_id}"))

    def create_dataset(
        self,
        name: str,
        client_url: str,
        *,
        type: str = "semantic_segmentation",
        format: str = "monai",
        description: str = "",
        client_id: str | None = None,
        client_secret: str | None = None,
        filters: str | None = None,
    ) -> Dataset:
        """Register a dataset: a folder or bucket with `manifest.json`, or a DICOMweb root (checked by the server)."""
        body: dict[str, Any] = {"name": name, "description": description, "type": type, "format": format}
        body["client_url"] = client_url
        extra = {"client_id": client_id, "client_secret": client_secret, "filters": filters}
        body.update({k: v for k, v in extra.items() if v is not None})
        return Dataset.from_api(self.transport.json("POST", "datasets", json=body))

    def delete_dataset(self, dataset: Dataset | str) -> None:
        """Delete a dataset (refused while an experiment uses it)."""
        self.transport.request("DELETE", f"datasets/{_id(dataset)}")

    def _dataset_action(self, dataset: Dataset | str, action: str, specs: dict[str, Any]) -> Any:
        return self.transport.json("POST", f"datasets/{_id(dataset)}/jobs", json={"action": action, "specs": specs})

    def next_image(self, dataset: Dataset | str) -> NextImage:
        """An unlabeled image of the dataset (`nextimage`); `NotFound` when none is left."""
        answer = self._dataset_action(dataset, "nextimage", {})
        return NextImage(image=answer["image"], meta=answer.get("meta") or {}, unlabeled=answer.get("unlabeled"))

    def cache_image(self, dataset: Dataset | str, image: str, ttl: int | None = None) -> None:
        """Ask the server to fetch an image into its cache ahead of inference."""
        self._dataset_action(dataset, "cacheimage", {"image": image, **({"ttl": ttl} if ttl else {})})

    def notify(self, dataset: Dataset | str, **sections: list[dict[str, str]]) -> None:
        """Record label changes: `added=[{"image": ..., "label": ...}]`, `updated=`, `removed=`."""
        self._dataset_action(dataset, "notify", sections)

    # experiments
    def experiments(self, *, user_only: bool = False, **filters: str) -> Iterator[Experiment]:
        """The caller's experiments, plus the base experiments unless `user_only`."""
        params = {**filters, **({"user_only": "true"} if user_only else {})}
        for raw in self._pages("experiments", "experiments", params):
            yield Experiment.from_api(raw)

    def base_experiments(self) -> list[Experiment]:
        """`experiments:base`: VISTA-3D, DeepEdit... to start from."""
        body = self.transport.json("GET", "experiments:base")
        return [Experiment.from_api(raw) for raw in body.get("experiments", [])]

    def experiment(self, experiment: Experiment | str) -> Experiment:
        """One experiment."""
        return Experiment.from_api(self.transport.json("GET", f"experiments/{experiment_id(experiment)}"))

    def create_experiment(self, name: str, network_arch: str = "monai_custom", **fields: Any) -> Experiment:
        """Create an experiment; `fields` are the API's (`bundle_url`, `train_datasets`, `realtime_infer`, ...).

        Datasets may be given as `Dataset` objects. With `realtime_infer=True` it returns once the model is warm.
        """
        body: dict[str, Any] = {"name": name, "network_arch": network_arch}
        for key, value in fields.items():
            if value is None:
                continue
            if key == "train_datasets":
                value = [_id(v) for v in value]
            elif key in ("eval_dataset", "inference_dataset"):
                value = _id(value)
            body[key] = value
        return Experiment.from_api(self.transport.json("POST", "experiments", json=body))

    def update_experiment(self, experiment: Experiment | str, **fields: Any) -> Experiment:
        """PATCH an experiment, e.g. `realtime_infer=False` to unload its model."""
        raw = self.transport.json("PATCH", f"experiments/{experiment_id(experiment)}", json=fields)
        return Experiment.from_api(raw)

    def delete_experiment(self, experiment: Experiment | str) -> None:
        """Delete an experiment (unloads its model; refused while a job runs)."""
        self.transport.request("DELETE", f"experiments/{experiment_id(experiment)}")

    # workspaces
    def workspaces(self) -> Iterator[Workspace]:
        """Every workspace of the caller."""
        for raw in self._pages("workspaces", "workspaces"):
            yield Workspace.from_api(raw)

    def create_workspace(self, name: str, cloud_type: str, cloud_specific_details: dict[str, Any]) -> Workspace:
        """Create a workspace (the server checks the credentials by connecting)."""
        body = {"name": name, "cloud_type": cloud_type, "cloud_specific_details": cloud_specific_details}
        return Workspace.from_api(self.transport.json("POST", "workspaces", json=body))

    def delete_workspace(self, workspace: Workspace | str) -> None:
        """Delete a workspace (refused while in use)."""
        self.transport.request("DELETE", f"workspaces/{_id(workspace)}")

    # inference
    def infer(
        self,
        experiment: Experiment | str,
        image: str,
        *,
        dataset_id: str | None = None,
        out_dir: str | Path | None = None,
        **bundle_params: Any,
    ) -> dict[str, bytes] | dict[str, Path]:
        """Real-time inference: output files by name (bytes), or written under `out_dir` (paths).

        `image` is an image id of the dataset (`dataset_id`, else the experiment's) or an http(s) URL;
        `bundle_params` go to the bundle, e.g. `label_prompt=[3]` (VISTA-3D) or `spleen=[[i, j, k]]`
        (DeepEdit; `prompts.vista3d()` / `prompts.deepedit()` build and check them).

        Example:
            >>> files = client.infer(exp, "img-1", out_dir="out", **prompts.vista3d(label_prompt=[3]))
            >>> volume = read_nrrd(Path(files["img-1_seg.nrrd"]).read_bytes())
        """
        specs: dict[str, Any] = {"image": image}
        if bundle_params:
            specs["bundle_params"] = bundle_params
        if dataset_id is not None:
            specs["dataset_id"] = _id(dataset_id)
        resp = self.transport.request(
            "POST", f"experiments/{experiment_id(experiment)}/jobs", json={"action": "inference", "specs": specs}
        )
        files = parse_multipart(resp.content, resp.headers.get("content-type", ""))
        if not files:
            raise ClientError("The inference answer had no output file.")
        return write_outputs(files, Path(out_dir)) if out_dir is not None else files
