"""The Ray engine (the optional `emofuse[cluster]` extra): each chunk of extraction jobs a Ray
task with one CPU, on a running cluster or a local instance; every node writes into the store
itself, so the store must lie on a filesystem all nodes share, at the same path.
"""

from __future__ import annotations

import logging
import re
import socket
from typing import Iterator

from emofuse.errors import ConfigError
from emofuse.features.store.extract import Result, _one_thread, _reason, run_jobs
from emofuse.features.store.plan import Job


def _run_jobs_on_ray(jobs: list[Job], cache_dir: str) -> list[Result]:
    """A Ray task: one chunk on one CPU of any node (Ray owns its worker processes)."""
    _one_thread()
    return run_jobs(jobs, cache_dir)


def run_ray(chunks: list[list[Job]], workers: int, cache_dir: str, address: str | None = None) -> Iterator[list[Result]]:
    """Run each chunk as a Ray task with one CPU and yield its results as tasks finish.

    `address` is a running cluster ("auto", "HOST:6379", "ray://HOST:10001"); without one a
    local Ray instance with `workers` CPUs is started and shut down afterwards. Every node
    writes into the store itself, so the store must lie on a filesystem all nodes share, at
    the same path. A task that fails as a whole fails its chunk's utterances (stage
    "worker"), as a dead process worker does; closing the generator cancels the rest."""
    if not chunks:
        return  # nothing to compute: no cluster to reach
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'emofuse[cluster]'") from None
    started = not ray.is_initialized()
    if started:
        _check_reachable(address)
        try:
            if address:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            else:
                ray.init(num_cpus=max(1, workers), include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise ConfigError(f"cannot start or reach {where}: {_reason(exc)}") from None
    task = ray.remote(num_cpus=1)(_run_jobs_on_ray)
    chunk_of = {task.remote(chunk, cache_dir): chunk for chunk in chunks}
    remaining = list(chunk_of)
    try:
        while remaining:
            done, remaining = ray.wait(remaining, num_returns=1)
            for ref in done:
                try:
                    results = ray.get(ref)
                except Exception as exc:  # the task's worker or node died
                    results = [Result(job.utt["id"], errors=[("worker", _reason(exc))]) for job in chunk_of[ref]]
                yield results
    except BaseException:
        for ref in remaining:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


def _check_reachable(address: str | None, timeout: float = 10.0) -> None:
    """One clear line for a cluster address nobody answers at (Ray itself retries for minutes)."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)", address or "")
    if match is None:  # "auto" or no address: Ray finds or starts the cluster itself
        return
    try:
        socket.create_connection((match[1], int(match[2])), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None
