"""What one dataset source may bring into the server: bytes per DICOMweb answer, voxels per volume.

The defaults here are the settings' defaults (`config.py` reads them from this module), so a source opened
without settings (a job worker, a test) is capped as a server is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medcloud.config import Settings

# 512 Mi voxels: a 1024 x 1024 x 512 volume; 2 GiB as float32, the largest array one request makes.
DEFAULT_MAX_VOXELS = 1024**3 // 2
# A series of DEFAULT_MAX_VOXELS int16 voxels is 1 GiB; twice that leaves room for headers and any codec.
DEFAULT_WADO_MAX_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class SourceLimits:
    """Caps a `DataSource` applies while it fetches: `wado_max_bytes` per HTTP answer of a DICOMweb server
    (`MEDCLOUD_WADO_MAX_BYTES`), `max_voxels` per volume it decodes (`MEDCLOUD_MAX_VOXELS`)."""

    wado_max_bytes: int = DEFAULT_WADO_MAX_BYTES
    max_voxels: int = DEFAULT_MAX_VOXELS

    @classmethod
    def from_settings(cls, settings: Settings) -> SourceLimits:
        return cls(wado_max_bytes=settings.wado_max_bytes, max_voxels=settings.max_voxels)
