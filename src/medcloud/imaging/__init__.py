"""DICOM imaging: series to volumes and NIfTI, DICOM SEG to and from label volumes, synthetic CT series."""
