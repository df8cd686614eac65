"""One way for every job entry point to reach Ray."""

from __future__ import annotations

import os

import ray


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Use the Ray already initialised in this process, else connect to ``address`` (default
    ``$RAY_ADDRESS``, set inside ``ray job submit``), else start a local Ray with ``num_cpus``
    CPUs and no dashboard. Returns True when this call started or connected Ray (the caller then
    calls ``ray.shutdown()``)."""

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    return True
