"""Data sources: where a dataset's images come from (object storage, DICOMweb), and their local cache."""
