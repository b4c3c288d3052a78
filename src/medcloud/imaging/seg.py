"""DICOM SEG to label volume on a series' grid (any writer's SEG), and label volume to SEG with highdicom.

Label volumes use `imaging.series`' axis order: `labels[i=column, j=row, k=slice]`, on the grid of a
`SeriesVolume`. A `labels` mapping is the experiment's `model_params.labels`: label index (as a string or
int) to name. Segment names match it case-insensitively with spaces equal to underscores; a segment
whose name is not in the mapping becomes 0 (background).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from medcloud.imaging import voxels
from medcloud.imaging.series import DicomInput, SeriesVolume, load_dataset, shallow_copy, sort_instances

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
# Type-2 attributes highdicom copies from the source images; real series sometimes lack them.
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def normalize_name(name: str) -> str:
    """The form names are compared in: lower case, surrounding blanks dropped, spaces as underscores."""
    return "_".join(str(name).strip().lower().split())


def label_indices(labels: Mapping[str | int, str]) -> dict[str, int]:
    """Normalized name -> label index (1..255) of a `model_params.labels` mapping."""
    out: dict[str, int] = {}
    for key, name in labels.items():
        index = int(key)
        if not 0 <= index <= 255:
            raise ValueError(f"Label index {key} is outside 0..255.")
        out.setdefault(normalize_name(name), index)
    return out


def segment_names(seg: Dataset) -> dict[int, str]:
    """SegmentNumber -> SegmentLabel of a SEG (empty name when the segment has none)."""
    return {int(item.SegmentNumber): str(item.get("SegmentLabel", "")) for item in seg.get("SegmentSequence", [])}


def seg_to_labels(
    seg: DicomInput, series: SeriesVolume, labels: Mapping[str | int, str], *, max_voxels: int | None = None
) -> np.ndarray:
    """The SEG's segments as one uint8 label array on `series`' grid (where segments overlap, the higher
    label index wins). Frames are placed by their source SOPInstanceUID when it is one of the series' slices,
    else by their ImagePositionPatient; `ValueError` when a SEG with foreground places none of it.

    `max_voxels`: a SEG whose Rows x Columns x NumberOfFrames is larger is refused (`errors.Invalid`, from
    `imaging.voxels`) before its frames are decoded: a few compressed bytes can declare billions of them.
    """
    ds = load_dataset(seg)
    if str(ds.get("SOPClassUID", SEG_SOP_CLASS)) != SEG_SOP_CLASS and ds.get("Modality") != "SEG":
        raise ValueError("The instance is not a DICOM Segmentation.")
    if max_voxels is not None:
        voxels.check_count(voxels.dataset_voxels(ds), max_voxels, what="The DICOM SEG")
    by_name = label_indices(labels)
    index_of = {number: by_name.get(normalize_name(name), 0) for number, name in segment_names(ds).items()}
    masks = _frame_masks(ds)
    geometry = _Geometry(ds, series)
    out = np.zeros(series.shape, dtype=np.uint8)
    frames = [(index_of.get(geometry.segment(f), 0), f) for f in range(len(masks))]
    placed = foreground = 0
    for index, f in sorted(frames):
        if index == 0 or not masks[f].any():
            continue
        foreground += 1
        where = geometry.voxels(f, masks[f])
        if where[0].size:
            out[where] = index
            placed += 1
    if foreground and not placed:
        raise ValueError("The segmentation does not lie on the image series' voxel grid.")
    return out


def _frame_masks(ds: Dataset) -> np.ndarray:
    """The SEG's frames as booleans `(frame, row, column)`; FRACTIONAL frames thresholded at one half."""
    pixels = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    pixels = pixels.reshape(frames, int(ds.Rows), int(ds.Columns))
    if ds.get("SegmentationType", "BINARY") == "FRACTIONAL":
        return pixels.astype(np.int64) * 2 > int(ds.get("MaximumFractionalValue", 255))
    return pixels > 0


def _first(item: Dataset | None, sequence: str) -> Dataset | None:
    if item is None or sequence not in item or not item[sequence].value:
        return None
    return item[sequence].value[0]


class _Geometry:
    """Where each SEG frame lies on a series' grid, read from its functional groups."""

    def __init__(self, ds: Dataset, series: SeriesVolume) -> None:
        self.series = series
        self.per_frame = list(ds.get("PerFrameFunctionalGroupsSequence", []))
        self.shared = _first(ds, "SharedFunctionalGroupsSequence")
        self.same_size = (int(ds.Rows), int(ds.Columns)) == (series.shape[1], series.shape[0])
        self.slice_of = {uid: k for k, uid in enumerate(series.instance_uids)}
        self.inverse = np.linalg.inv(series.lps_affine)
        self.default_orientation = ds.get("ImageOrientationPatient")
        self.default_spacing = ds.get("PixelSpacing")

    def _group(self, f: int, sequence: str) -> Dataset | None:
        """The item of a functional group for frame `f`: per-frame first, then shared."""
        item = _first(self.per_frame[f] if f < len(self.per_frame) else None, sequence)
        return item if item is not None else _first(self.shared, sequence)

    def segment(self, f: int) -> int:
        ident = self._group(f, "SegmentIdentificationSequence")
        return int(ident.ReferencedSegmentNumber) if ident is not None else 1

    def _source_slice(self, f: int) -> int | None:
        derivation = self._group(f, "DerivationImageSequence")
        for source in derivation.get("SourceImageSequence", []) if derivation is not None else []:
            k = self.slice_of.get(str(source.get("ReferencedSOPInstanceUID", "")))
            if k is not None:
                return k
        return None

    def voxels(self, f: int, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel indices (i, j, k) of the frame's foreground pixels that fall inside the series' grid."""
        rows, cols = np.nonzero(mask)
        k = self._source_slice(f)
        if k is not None and self.same_size:
            return cols, rows, np.full(rows.shape, k)
        position = self._group(f, "PlanePositionSequence")
        orientation = self._group(f, "PlaneOrientationSequence")
        iop = orientation.ImageOrientationPatient if orientation is not None else self.default_orientation
        if position is None or iop is None:
            raise ValueError("A segmentation frame names neither a slice of the series nor its position.")
        measures = self._group(f, "PixelMeasuresSequence")
        spacing = measures.PixelSpacing if measures is not None else self.default_spacing
        row_spacing, col_spacing = (float(v) for v in (spacing or (1.0, 1.0)))
        iop = np.asarray([float(v) for v in iop])
        ipp = np.asarray([float(v) for v in position.ImagePositionPatient])
        points = ipp[:, None] + np.outer(iop[:3] * col_spacing, cols) + np.outer(iop[3:] * row_spacing, rows)
        index = np.rint(self.inverse[:3, :3] @ points + self.inverse[:3, 3:]).astype(np.int64)
        inside = np.all((index >= 0) & (index < np.asarray(self.series.shape)[:, None]), axis=0)
        return index[0, inside], index[1, inside], index[2, inside]


def _segment_description(number: int, name: str, algorithm: str | None) -> hd.seg.SegmentDescription:
    if algorithm:
        identification = hd.AlgorithmIdentificationSequence(
            name=algorithm, family=codes.cid7162.ArtificialIntelligence, version="1"
        )
        kind = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    else:
        identification, kind = None, hd.seg.SegmentAlgorithmTypeValues.MANUAL
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=str(name)[:64],
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.Organ,
        algorithm_type=kind,
        algorithm_identification=identification,
    )


def _with_type2(ds: Dataset) -> Dataset:
    """`ds`, or a shallow copy of it with the missing Type-2 attributes highdicom needs set empty."""
    missing = [keyword for keyword in _TYPE2_COPIED if keyword not in ds]
    if not missing:
        return ds
    copy = shallow_copy(ds)
    for keyword in missing:
        setattr(copy, keyword, "")
    return copy


def labels_to_seg(
    label_volume: np.ndarray,
    source_datasets: Sequence[DicomInput],
    labels: Mapping[str | int, str],
    *,
    series_description: str = "Segmentation",
    series_number: int = 300,
    algorithm: str | None = "medcloud",
    manufacturer: str = "medcloud",
    series_uid: str | None = None,
) -> pydicom.Dataset:
    """A BINARY DICOM SEG (highdicom) of `label_volume` (`[column, row, slice]` on the series' grid).

    One segment per label value present, in the order of `labels` (values it does not name come last,
    as `label_<value>`); empty frames are left out. `algorithm` None marks the segments MANUAL.
    """
    sources = [_with_type2(ds) for ds in sort_instances(source_datasets)]
    volume = np.asarray(label_volume)
    if volume.shape != (int(sources[0].Columns), int(sources[0].Rows), len(sources)):
        raise ValueError(f"The label volume's shape {volume.shape} does not match the series.")
    present = [int(v) for v in np.unique(volume) if v != 0]
    if not present or min(present) < 0 or max(present) > 255:
        raise ValueError("The label volume has no labelled voxel, or values outside 0..255.")
    names = {int(key): name for key, name in labels.items() if int(key) in present}
    names |= {value: f"label_{value}" for value in present if value not in names}
    lut = np.zeros(256, dtype=np.uint8)
    for number, value in enumerate(names, 1):
        lut[value] = number
    pixels = np.ascontiguousarray(lut[volume.astype(np.int64)].transpose(2, 1, 0))
    descriptions = [_segment_description(n, name, algorithm) for n, name in enumerate(names.values(), 1)]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name="medcloud",
        software_versions="1",
        device_serial_number="1",
        series_description=series_description,
        omit_empty_frames=True,
    )
    seg.preamble = b"\0" * 128
    return seg
