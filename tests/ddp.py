"""Run a command-line entry point (``semivl_fast.train`` / ``semivl_fast.pretrain``) in N gloo processes on CPU, as
torchrun would, and collect each rank's returned losses."""

import importlib
import os
import socket

import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, module: str, args: list[str], queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    result = importlib.import_module(module).main(args)
    queue.put((rank, result["losses"]))


def run_ddp(module: str, args: list[str], world: int = 2, timeout: float = 600) -> dict[int, list[float]]:
    """``module.main(args)`` in ``world`` spawned processes; {rank: losses}. Fails if a process fails."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, module, args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout)
        assert p.exitcode == 0, "a DDP worker failed"
    return dict(queue.get() for _ in procs)
