"""Tables of datasets and of which image each dataset last served (for `nextimage`)."""

from __future__ import annotations

from sqlalchemy import Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from medcloud.db import Base, Owned, Timestamped, new_id


class Dataset(Base, Owned):
    __tablename__ = "datasets"
    type: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(32), default="monai")
    source_kind: Mapped[str] = mapped_column(String(16))  # "objectstore" or "dicomweb"
    client_url: Mapped[str] = mapped_column(String(2048))
    filters: Mapped[str | None] = mapped_column(String(2048), default=None)
    sealed_secrets: Mapped[str | None] = mapped_column(Text, default=None)


class ServedImage(Base):
    """When `nextimage` last handed out an image: the least recently served goes next."""

    __tablename__ = "served_images"
    __table_args__ = (UniqueConstraint("dataset_id", "image_id"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[str] = mapped_column(String(256))
    served_at: Mapped[float] = mapped_column(Float)


class Notification(Base, Timestamped):
    """One durable `notify` entry: an image whose label was added, updated or removed."""

    __tablename__ = "notifications"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # orders notifications
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    section: Mapped[str] = mapped_column(String(16))
    image_id: Mapped[str] = mapped_column(String(256))
    label_id: Mapped[str] = mapped_column(String(256))
