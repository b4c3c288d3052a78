"""Where model code runs: one interface for model hosts and one for jobs, each with a `local` and a `ray` backend.

`base` defines the two interfaces and what crosses them (host specs and images in, output bytes out;
job tickets in, progress and outcomes out). `kinds` declares every job kind once. `choose` builds the
backends the settings name: `local` (child processes on this machine, the default) or `ray` (a Ray
cluster at `MEDCLOUD_RAY_ADDRESS`). Only the `ray_*` modules import Ray.
"""
