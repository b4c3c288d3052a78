"""Workspaces: a user's bucket (S3, Azure, GCS, local) where job results are written."""
