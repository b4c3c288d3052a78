"""The DataSource protocol every dataset backend implements (object storage, DICOMweb)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class DataSource(Protocol):
    """A dataset's images, as the dataset actions and inference need them."""

    def image_ids(self) -> list[str]:
        """Ids of every image of the dataset."""

    def unlabeled_ids(self) -> list[str]:
        """Ids of images no label references yet."""

    def check_image(self, image_id: str) -> None:
        """Raise `Invalid` if the image is not in the dataset."""

    def meta(self, image_id: str) -> dict[str, Any]:
        """What `nextimage` returns beside the id (API.md §3.1)."""

    def fetch(self, image_id: str, dest_dir: Path) -> list[Path]:
        """Download the image's files into `dest_dir`; return the local paths."""
