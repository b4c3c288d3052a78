"""medcloud: a self-hosted server for medical-imaging AI that speaks the MONAI Cloud API."""

__version__ = "0.1.0"
