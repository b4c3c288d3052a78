"""The one settings object: every `MEDCLOUD_*` environment variable is read here and nowhere else."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from medcloud.inference.accel.modes import InferenceMode
from medcloud.sources.limits import DEFAULT_MAX_VOXELS, DEFAULT_WADO_MAX_BYTES


class Settings(BaseSettings):
    """Server settings; each field is the environment variable `MEDCLOUD_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="MEDCLOUD_", extra="ignore")

    data_dir: Path = Field(default=Path("data"), description="SQLite DB, caches, bundles, job folders.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in data_dir.")
    host: str = "127.0.0.1"
    port: int = 8000
    secret_key: str | None = Field(
        default=None,
        description="Signs tokens and encrypts stored secrets; generated into data_dir when unset.",
    )
    token_ttl_s: int = 24 * 3600
    # Guessing or hammering API keys (auth/limits.py): limits per client address (an IPv6 /64), in each API
    # process; over them the answer is 429 with Retry-After.
    login_rate_per_minute: int = Field(
        default=60, ge=0, description="Logins one client address may try per minute, in bursts of as many (0: off)."
    )
    auth_failures_per_minute: int = Field(
        default=30,
        ge=0,
        description="Bad API keys (at /login or as `Authorization: ApiKey`) one client address may send per minute "
        "before every key it sends gets 429 (0: off).",
    )
    bad_key_cache_s: float = Field(
        default=30.0, ge=0, description="How long a refused API key is refused from memory, without a lookup (0: off)."
    )
    api_docs: bool = Field(
        default=True,
        description="Serve Swagger UI at /docs from the installed package's files (never a CDN); false: no /docs.",
    )

    # Blocking work runs in one bounded pool per kind (medcloud/pools.py), so slow storage or bundle
    # downloads never queue the token check of other requests.
    pool_auth_threads: int = Field(default=8, ge=1, description="Token/membership checks and login.")
    pool_db_threads: int = Field(default=16, ge=1, description="Metadata DB work of plain routes.")
    pool_files_threads: int = Field(default=8, ge=1, description="Job logs and results, inference outputs.")
    pool_storage_threads: int = Field(default=16, ge=1, description="Dataset buckets, DICOMweb, image URLs.")
    pool_bundle_threads: int = Field(default=4, ge=1, description="Bundle downloads and unpacking.")
    pool_model_threads: int = Field(default=16, ge=1, description="Requests forwarded to model hosts.")
    pool_storage_deadline_s: float | None = Field(
        default=300.0, gt=0, description="A request's storage work (queueing included) past this answers 503."
    )
    pool_bundle_deadline_s: float | None = Field(
        default=1800.0, gt=0, description="Fetching a bundle (queueing included) past this answers 503."
    )
    demo: bool = Field(default=True, description="On `serve`, create the demo org/user/key, dataset and bundles.")
    # The hosted service's default org for MONAI users: the guides' URLs work unchanged against the demo.
    demo_org: str = "iasixjqzw1hj"
    demo_user: str = "demo"

    # A MONAI bundle is code: only these hosts may serve `bundle_url`s, on every redirect hop ("*" allows
    # any). Only NGC by default: a registry whose publishers are vetted, and which also hosts the MONAI
    # model zoo (MONAI's own `download(source="monaihosting")` fetches from api.ngc.nvidia.com). github.com,
    # its release-asset hosts and huggingface.co are left out: anyone can publish a "bundle" there.
    bundle_allowed_hosts: list[str] = Field(
        default_factory=lambda: ["api.ngc.nvidia.com", "files.ngc.nvidia.com", "xfiles.ngc.nvidia.com"]
    )
    bundle_allow_local_paths: bool = Field(
        default=False, description="Allow `file://` URLs and paths on this server as `bundle_url` (demo, tests)."
    )
    bundle_max_files: int = Field(default=20_000, ge=1, description="Most files a bundle may hold (folder or archive).")
    bundle_cache_max_bytes: int = Field(
        default=20 * 1024**3, ge=0, description="Downloaded bundle archives kept; least recently used go first."
    )
    bundle_mirror: str | None = Field(
        default=None,
        description="Local folder (or URL prefix) looked up first for a bundle URL's file name (offline sites).",
    )
    bundle_max_bytes: int = 4 * 1024**3
    # MONAI runs a config string starting with `$` as Python and resolves `@`/`%` references and `_target_`
    # components: off, such client values (overrides, bundle_params, train specs) are refused (bundles/overrides.py).
    allow_expression_overrides: bool = Field(
        default=False,
        description="Accept MONAI expressions, references and components in client overrides (trusted clients only).",
    )
    max_body_bytes: int = Field(
        default=16 * 1024**2,
        ge=1024,
        description="Largest request body accepted (413 above); API bodies are small JSON.",
    )
    max_label_body_bytes: int = Field(
        default=256 * 1024**2,
        ge=1024,
        description="Largest label volume a viewer may save (PUT .../images/{id}/label; 413 above), held in memory.",
    )

    # Datasets and `local` workspaces on this server's own folders (sources/local_roots.py): off by default;
    # when on, each org reaches only the folders listed for it (links resolved). The demo turns both on for
    # its own org and folder (demo/setup.py).
    dataset_allow_local_paths: bool = Field(
        default=False,
        description="Allow datasets and `local` workspaces on the server's own folders (paths, file:// URLs).",
    )
    dataset_local_roots: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Folders each org\'s local datasets and workspaces must lie in, e.g. {"acme": ["/srv/acme"], '
        '"*": ["/srv/shared"]} ("*": every org); none for an org refuses its local paths.',
    )
    # Volumes are checked from their headers before a voxel is decompressed (imaging/voxels.py).
    max_voxels: int = Field(
        default=DEFAULT_MAX_VOXELS,
        ge=1,
        description="Most voxels of an image, label or DICOM SEG the server reads (400 above, read from headers).",
    )
    max_label_saves: int = Field(
        default=4, ge=1, description="Label saves (PUT .../label) at once per API process; 503 with Retry-After above."
    )
    wado_max_bytes: int = Field(
        default=DEFAULT_WADO_MAX_BYTES,
        ge=1,
        description="Largest answer read from a DICOMweb server (a series by WADO-RS, metadata, QIDO).",
    )
    # Every URL a client gives (bundles, inference images, DICOMweb, object-storage endpoints, MLflow,
    # GCS token_uri) is checked by medcloud/egress.py: http(s) only, and no private, loopback, link-local,
    # multicast or reserved address unless allowed here.
    egress_allow_private: bool = Field(default=False, description="Let client URLs reach any address at all.")
    egress_allowed_networks: list[str] = Field(
        default_factory=list, description='Networks client URLs may reach besides public ones, e.g. ["10.1.0.0/16"].'
    )
    egress_max_bytes: int = Field(default=2 * 1024**3, ge=1, description="Largest image downloaded from a URL.")
    egress_deadline_s: float = Field(default=900.0, gt=0, description="Longest a download from a client URL may take.")
    url_image_cache_max_bytes: int = Field(
        default=10 * 1024**3,
        ge=0,
        description="Images fetched from URLs kept in the cache; least recently used go first.",
    )
    archive_max_unpacked_bytes: int = Field(default=8 * 1024**3, ge=1, description="Most bytes one archive unpacks to.")
    archive_max_members: int = Field(default=100_000, ge=1, description="Most members one archive may hold.")
    # Sites whose "aws" or "azure" is a self-hosted store (MinIO, Azurite, Azure Stack): the endpoint used for
    # workspaces that name none. The Azure one may contain `{account}`.
    aws_endpoint_url: str | None = None
    azure_blob_endpoint: str | None = None
    # The same for "gcp" workspaces: a GCS JSON-API endpoint (an emulator, a GCS-compatible store).
    gcs_endpoint: str | None = None
    # Where a job's results go in its workspace bucket: `results/{job_id}/` (the seed guide's layout) or
    # `shared/orgs/{org}/users/{user_id}/jobs/{job_id}/` (`ngc`: where the hosted service's notebooks read).
    results_layout: Literal["results", "ngc"] = "results"
    image_cache_max_ttl_s: int = 3600
    image_cache_max_bytes: int = Field(
        default=50 * 1024**3,
        ge=1,
        description="Bytes the image cache keeps; least recently used images go first (the newest always stays).",
    )
    cache_sweep_interval_s: float = 30.0
    host_start_timeout_s: float = 600.0
    # Accelerated inference (inference/accel/, docs/performance.md): the mode of experiments whose
    # model_params name none, and the check a faster mode must pass against the exact run.
    inference_mode: InferenceMode = "exact"
    inference_check_min_dice: float = Field(default=0.99, ge=0.0, le=1.0)
    # How long a model host's start waits for its faster network (then the exact one serves until it is built).
    inference_prepare_wait_s: float = Field(default=120.0, ge=0.0)
    max_train_jobs: int | None = Field(
        default=None, ge=1, description="Train/batch jobs running at once; default one per GPU (one without GPU)."
    )
    host_python: str | None = Field(default=None, description="Python that runs model hosts; default ours.")

    # Model code (bundles are code) runs in a bubblewrap sandbox: see medcloud/sandbox.py and docs/security.md.
    model_sandbox: Literal["auto", "bwrap", "unsafe"] = Field(
        default="auto",
        description="auto: model code runs in bubblewrap's namespaces, and is refused where bwrap cannot create "
        "them; bwrap: the same, and the server refuses to start without it; unsafe: model code runs with a "
        "scrubbed environment only (every bundle trusted).",
    )
    sandbox_uid_base: int = Field(default=2_100_000_000, ge=1000, description="First uid given to model code.")
    sandbox_memory_bytes: int | None = Field(
        default=None, ge=1 << 26, description="Address space of one model process (RLIMIT_AS); none by default."
    )
    sandbox_max_processes: int = Field(
        default=4096, ge=16, description="Processes and threads of one experiment's model code (RLIMIT_NPROC)."
    )
    sandbox_cpu_seconds: int | None = Field(default=None, ge=1, description="CPU seconds of one model process.")
    sandbox_cpus: int | None = Field(default=None, ge=1, description="CPUs one model process may run on.")
    sandbox_file_bytes: int | None = Field(
        default=64 * 1024**3, ge=1 << 20, description="Largest file model code may write (RLIMIT_FSIZE)."
    )
    sandbox_max_open_files: int = Field(default=65536, ge=64, description="Open files of one model process.")
    sandbox_tmp_bytes: int = Field(
        default=8 * 1024**3, ge=1 << 20, description="Size of model code's private /tmp and /dev/shm (memory)."
    )
    sandbox_job_wall_s: float | None = Field(
        default=None, gt=0, description="Longest a job's model process may run; killed past it (none by default)."
    )
    sandbox_readable_paths: list[str] = Field(
        default_factory=list, description="More folders model code sees read-only (e.g. a shared model store)."
    )
    sandbox_env_passthrough: list[str] = Field(
        default_factory=list, description="Extra environment variables model code may see (e.g. a proxy)."
    )

    vista3d_bundle: str | None = Field(
        default=None, description="URL or path of a VISTA-3D bundle in the official layout (zip or folder)."
    )
    deepedit_bundle: str | None = Field(
        default=None,
        description="URL or path of a DeepEdit bundle in the layout of spleen_deepedit_annotation (zip or folder).",
    )

    # Where model code runs (medcloud/execution/): unset = this machine (child processes); set = a Ray cluster.
    ray_address: str | None = Field(
        default=None, description="Ray cluster (GCS) address, e.g. 10.0.0.5:6379; unset runs everything here."
    )
    ray_dashboard_url: str | None = Field(
        default=None,
        description="The cluster's Jobs API (dashboard), e.g. http://10.0.0.5:8265; default: asked of Ray.",
    )
    ray_namespace: str = Field(default="medcloud", description="Ray namespace of this server's apps and jobs.")
    ray_shared_dir: Path | None = Field(
        default=None,
        description="A folder every Ray node sees at the same path (NFS, ...): bundles, checkpoints, job folders.",
    )
    ray_gpus_per_replica: float = Field(default=0.0, ge=0, description="GPUs per model replica (0.5: two share one).")
    ray_cpus_per_replica: float = Field(default=1.0, gt=0, description="CPUs per model replica.")
    ray_gpus_per_job: float = Field(default=0.0, ge=0, description="GPUs per train/batch job.")
    ray_min_replicas: int = Field(
        default=1, ge=1, description="Fewest replicas any experiment runs (capped by the max)."
    )
    ray_max_replicas: int = Field(default=1, ge=1, description="Most replicas autoscaling may start per experiment.")

    @field_validator("model_sandbox", mode="before")
    @classmethod
    def _sandbox_mode(cls, value: object) -> object:
        # the names before bubblewrap: `uid` asked for isolation (now bwrap's), `off` for none
        return {"uid": "bwrap", "off": "unsafe"}.get(value, value) if isinstance(value, str) else value

    @field_validator("egress_allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for network in value:
            ipaddress.ip_network(network, strict=False)  # a typo fails at start-up, not at the first download
        return value

    @field_validator("dataset_local_roots")
    @classmethod
    def _roots(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for org, folders in value.items():
            for folder in folders:
                if not Path(folder).is_absolute():  # a typo fails at start-up, not at the first dataset
                    raise ValueError(f"dataset_local_roots[{org!r}]: {folder!r} is not an absolute path")
        return value

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'medcloud.db').resolve()}"

    def resolved(self) -> Settings:
        """A copy with `data_dir` absolute, created, and closed to other users (`datadir.secure_data_dir`)."""
        from medcloud.datadir import secure_data_dir

        data_dir = secure_data_dir(self.data_dir.expanduser().resolve())
        return self.model_copy(update={"data_dir": data_dir})
