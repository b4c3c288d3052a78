"""The experiments table."""

from __future__ import annotations

from sqlalchemy import Boolean, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from medcloud.db import Base, Owned


class Experiment(Base, Owned):
    __tablename__ = "experiments"
    network_arch: Mapped[str] = mapped_column(String(64))
    base_experiment: Mapped[list] = mapped_column(default=list)
    train_datasets: Mapped[list] = mapped_column(default=list)
    eval_dataset: Mapped[str | None] = mapped_column(String(36), default=None)
    inference_dataset: Mapped[str | None] = mapped_column(String(36), default=None)
    realtime_infer: Mapped[bool] = mapped_column(Boolean, default=False)
    realtime_infer_request_timeout: Mapped[int] = mapped_column(Integer, default=60)
    bundle_url: Mapped[str | None] = mapped_column(String(2048), default=None)
    workspace: Mapped[str | None] = mapped_column(String(36), default=None)
    cloud_details: Mapped[dict] = mapped_column(default=dict)  # non-secret part of inline storage
    sealed_cloud_secrets: Mapped[str | None] = mapped_column(Text, default=None)
    model_params: Mapped[dict] = mapped_column(default=dict)
    bundle_dir: Mapped[str] = mapped_column(String(1024), default="")
    # The accelerated-inference mode its model host runs and the check that chose it (inference/accel/).
    inference: Mapped[dict | None] = mapped_column(default=None)
