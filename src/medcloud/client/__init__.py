"""The Python client of the MONAI Cloud API (medcloud or the hosted service): `from medcloud.client import Client`.

Only httpx, numpy and pynrrd are needed (no torch, no MONAI), so a notebook can import it.
"""

from medcloud.client.client import Client
from medcloud.client.errors import (
    BadRequest,
    ClientError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    MedcloudError,
    NotFound,
    PayloadTooLarge,
    ServerError,
    Unauthorized,
    Unavailable,
)
from medcloud.client.outputs import Volume, parse_multipart, read_nrrd
from medcloud.client.profiles import DEFAULT_ORG, Profile, load_profile, save_profile
from medcloud.client.types import Dataset, Experiment, Job, NextImage, Progress, Workspace

__all__ = [
    "DEFAULT_ORG",
    "BadRequest",
    "Client",
    "ClientError",
    "Conflict",
    "ConnectionFailed",
    "Dataset",
    "Experiment",
    "Forbidden",
    "Job",
    "MedcloudError",
    "NextImage",
    "NotFound",
    "PayloadTooLarge",
    "Profile",
    "Progress",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "Volume",
    "Workspace",
    "load_profile",
    "parse_multipart",
    "read_nrrd",
    "save_profile",
]
