"""The model side of a job: runs in the sandbox (`sandbox.py`) and runs the bundle's code — train, batch
inference, progress, local MLflow. It imports nothing of the server's state (tests/test_import_contract.py)."""
