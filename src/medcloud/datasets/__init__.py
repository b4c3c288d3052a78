"""Datasets: a manifest on object storage or a DICOMweb server, and their actions."""
