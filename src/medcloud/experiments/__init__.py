"""Experiments: a model (custom bundle or VISTA-3D) with its datasets, real-time host and jobs."""
