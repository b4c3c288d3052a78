"""Request and response shapes of experiments and experiment actions."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from medcloud.bundles.overrides import forbidden_keys
from medcloud.egress import redact_url
from medcloud.execution.kinds import EXPERIMENT_ACTIONS
from medcloud.families.registry import NETWORK_ARCHS
from medcloud.inference.accel.modes import InferenceMode
from medcloud.timestamps import UtcDatetime

# One member per network_arch of the family registry (`NetworkArch.VISTA3D == "monai_vista3d"`).
NetworkArch = StrEnum("NetworkArch", {arch.removeprefix("monai_").upper(): arch for arch in NETWORK_ARCHS})


class ExperimentAction(StrEnum):
    INFERENCE = "inference"
    TRAIN = "train"
    ANNOTATION = "annotation"
    BATCHINFER = "batchinfer"


class ModelParams(BaseModel):
    model_config = ConfigDict(extra="allow")
    labels: dict[str, str] | None = None
    override: dict[str, Any] = Field(default_factory=dict)
    image_key: str = Field(default="image", min_length=1)
    replicas: int = Field(default=1, ge=1, le=8)
    # None: the server's MEDCLOUD_INFERENCE_MODE. A faster mode serves once checked (inference/accel/checked.py).
    inference_mode: InferenceMode | None = None

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("Labels cannot be empty")
        for key in value:
            if not key.isdigit() or not 0 < int(key) < 256:
                raise ValueError(f"label index {key!r} must be an integer from 1 to 255")
        return {str(int(k)): v for k, v in value.items()}

    @field_validator("override")
    @classmethod
    def _override(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Expressions are checked by the service, which knows the operator's setting; these keys never pass.
        bad = forbidden_keys(value)
        if bad:
            raise ValueError(f"override may not set {', '.join(bad)}")
        return value


class ExperimentCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=256)
    description: str = ""
    network_arch: NetworkArch
    base_experiment: list[str] = Field(default_factory=list)
    train_datasets: list[str] = Field(default_factory=list)
    eval_dataset: str | None = None
    inference_dataset: str | None = None
    realtime_infer: bool = False
    realtime_infer_request_timeout: int = Field(default=60, gt=0, le=24 * 3600)
    bundle_url: str | None = None
    # Pins the bundle archive: the download (or local archive) must have this SHA-256, else 400.
    bundle_sha256: str | None = Field(default=None, description="SHA-256 (64 hex digits) of the bundle archive.")
    workspace: str | None = None
    cloud_details: dict[str, Any] | None = None
    model_params: ModelParams = Field(default_factory=ModelParams)

    @field_validator("bundle_sha256")
    @classmethod
    def _sha256(cls, value: str | None) -> str | None:
        if value is None:
            return None
        text = value.strip().lower().removeprefix("sha256:")
        if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
            raise ValueError("bundle_sha256 must be the 64 hexadecimal digits of the archive's SHA-256")
        return text


class ExperimentPatch(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str | None = Field(default=None, min_length=1, max_length=256)
    description: str | None = None
    realtime_infer: bool | None = None
    realtime_infer_request_timeout: int | None = Field(default=None, gt=0, le=24 * 3600)
    eval_dataset: str | None = None
    inference_dataset: str | None = None
    train_datasets: list[str] | None = None
    # Not applied (model parameters are fixed at creation), but a hostile value is refused, not ignored.
    model_params: dict[str, Any] | None = None


class ExperimentOut(BaseModel):
    """An experiment as the API shows it: read from its row (`ExperimentOut.model_validate(row)`, then its
    jobs' ids), or a base experiment of the catalogue."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    description: str
    network_arch: str
    version: str | None = None
    ngc_path: str | None = None  # base experiments: where the service's NGC catalogue keeps the bundle
    base_experiment: list[str]
    train_datasets: list[str]
    eval_dataset: str | None
    inference_dataset: str | None
    realtime_infer: bool
    realtime_infer_support: bool = True
    realtime_infer_request_timeout: int
    bundle_url: str | None
    workspace: str | None
    model_params: dict[str, Any]
    # The mode real-time inference runs in and the check that chose it (`CheckedPredictor.report`);
    # None until the experiment's model host has answered a request in a mode other than exact.
    inference: dict[str, Any] | None = None
    actions: list[str] = Field(default_factory=lambda: list(EXPERIMENT_ACTIONS))
    jobs: list[str] = Field(default_factory=list)
    public: bool = False
    created_on: UtcDatetime
    last_modified: UtcDatetime

    @field_validator("bundle_url")
    @classmethod
    def _redacted(cls, value: str | None) -> str | None:
        """Never a secret of the URL (user info, query values), rows stored before redaction too."""
        return redact_url(value) if value else None

    @field_validator("inference")
    @classmethod
    def _none_until_reported(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return value or None


class ExperimentJob(BaseModel):
    model_config = ConfigDict(extra="ignore")
    action: ExperimentAction
    specs: dict[str, Any] = Field(default_factory=dict)
    name: str | None = None
    description: str | None = None
    parent_job_id: str | None = None


class InferenceSpecs(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image: str = Field(min_length=1)
    bundle_params: dict[str, Any] = Field(default_factory=dict)
    dataset_id: str | None = None


# The shapes below only describe the API in OpenAPI (api/openapi.py): the router parses `ExperimentJob`
# and `learning.actions` checks each action's specs, with the sentences API.md asks for.


class _JobFields(BaseModel):
    name: str | None = None
    description: str | None = None
    parent_job_id: str | None = Field(default=None, description="A job of the same experiment.")


class InferenceJob(_JobFields):
    """Real-time inference: answers 201 multipart/form-data, one part per output file."""

    action: Literal["inference"]
    specs: InferenceSpecs


class TrainSpecs(BaseModel):
    """Bundle config overrides (any other key, e.g. `train#trainer#max_epochs`), and the keys the server reads."""

    model_config = ConfigDict(extra="allow")
    config_file: str | list[str] = Field(default="configs/train.json", description="Relative to the bundle.")
    logging_file: str | None = None
    meta_file: str | None = None
    tracking: Literal["mlflow"] | None = None
    tracking_uri: str | None = None
    experiment_name: str | None = None
    save_execute_config: bool | None = None
    num_gpu: int | None = Field(default=None, ge=0)
    epochs: int | None = Field(default=None, ge=1)
    val_interval: int | None = Field(default=None, ge=1)


class TrainJob(_JobFields):
    action: Literal["train"]
    specs: TrainSpecs = Field(default_factory=TrainSpecs)


class StopCriteria(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_rounds: int | None = None
    key_metric: float | None = None


class AnnotationSpecs(BaseModel):
    round_size: int = Field(default=1, ge=1)
    stop_criteria: StopCriteria = Field(default_factory=StopCriteria)
    train_spec: TrainSpecs = Field(default_factory=TrainSpecs, description="Specs of each round's train job.")


class AnnotationJob(_JobFields):
    action: Literal["annotation"]
    specs: AnnotationSpecs = Field(default_factory=AnnotationSpecs)


class BatchInferSpecs(BaseModel):
    train_job_id: str | None = Field(default=None, description="A Done train job: use its fine-tuned model.")


class BatchInferJob(_JobFields):
    action: Literal["batchinfer"]
    specs: BatchInferSpecs = Field(default_factory=BatchInferSpecs)
