"""HTTP layer: dependencies, the one error table, and multipart responses."""
