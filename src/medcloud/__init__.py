"""medcloud: a self-hosted server for medical-imaging AI that speaks the MONAI Cloud API."""

import os

# gRPC (Ray's client, in the API process with the Ray backend and in the tests) registers fork handlers
# that can abort a child forked while gRPC's threads run. medcloud forks model hosts and job workers
# (as their sandbox uid, so Python cannot use vfork) and they exec at once: they need no handler. Read
# by gRPC when it starts, so it is set before anything imports it.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

__version__ = "0.1.0"
