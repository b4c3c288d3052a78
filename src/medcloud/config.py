"""The one settings object: every `MEDCLOUD_*` environment variable is read here and nowhere else."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    demo: bool = Field(default=True, description="On `serve`, create the demo org/user/key, dataset and bundles.")
    # The hosted service's default org for MONAI users: the guides' URLs work unchanged against the demo.
    demo_org: str = "iasixjqzw1hj"
    demo_user: str = "demo"

    # A MONAI bundle is code: only these hosts may serve `bundle_url`s ("*" allows any).
    bundle_allowed_hosts: list[str] = Field(
        default_factory=lambda: [
            "localhost",
            "127.0.0.1",
            "api.ngc.nvidia.com",
            "github.com",
            "objects.githubusercontent.com",
            "huggingface.co",
        ]
    )
    bundle_allow_local_paths: bool = True
    bundle_mirror: str | None = Field(
        default=None,
        description="Local folder (or URL prefix) looked up first for a bundle URL's file name (offline sites).",
    )
    bundle_max_bytes: int = 4 * 1024**3

    dataset_allow_local_paths: bool = Field(
        default=True, description="Allow datasets on the server's own folders (local paths, file:// URLs)."
    )
    # Sites whose "aws" or "azure" is a self-hosted store (MinIO, Azurite, Azure Stack): the endpoint used for
    # workspaces that name none. The Azure one may contain `{account}`.
    aws_endpoint_url: str | None = None
    azure_blob_endpoint: str | None = None
    image_cache_max_ttl_s: int = 3600
    cache_sweep_interval_s: float = 30.0
    host_start_timeout_s: float = 600.0
    max_train_jobs: int | None = Field(
        default=None, ge=1, description="Train/batch jobs running at once; default one per GPU (one without GPU)."
    )
    host_python: str | None = Field(default=None, description="Python that runs model hosts; default ours.")

    vista3d_bundle: str | None = Field(
        default=None, description="URL or path of a VISTA-3D bundle in the official layout (zip or folder)."
    )

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'medcloud.db').resolve()}"

    def resolved(self) -> Settings:
        """A copy with `data_dir` absolute and created."""
        data_dir = self.data_dir.expanduser().resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        return self.model_copy(update={"data_dir": data_dir})
