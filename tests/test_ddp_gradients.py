"""DistributedDataParallel as training builds it (`scnet.engine.trainer.wrap_ddp`: no search for
unused parameters, gradients as bucket views, no buffer broadcast with frozen BatchNorm) gives, with
2 gloo ranks of one image each, the gradients of one process over the same global batch: the mean of
the two images' gradients, each image sampled with the same seed. Rank 1's images are edge cases (an
object no anchor matches, then none at all), whose parameters must still join the all-reduce."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.ddp_gradient_worker import ARCHS, STEPS, build, forward_backward
from tests.test_engine_failfast import _free_port

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ddp_gradients(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    port = str(_free_port())
    processes = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        processes.append(subprocess.Popen([sys.executable, "-m", "tests.ddp_gradient_worker", str(out)], cwd=REPO,
                                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:  # a parameter missing from one rank's graph would leave the other waiting in the all-reduce
        outputs = [p.communicate(timeout=600)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    for p, output in zip(processes, outputs):
        assert p.returncode == 0, output[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_two_gloo_ranks_give_one_process_gradients(ddp_gradients, arch):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks: the same summation order in every kernel
    flags = torch.load(ddp_gradients / f"{arch}.flags.pt")
    assert flags["find_unused_parameters"] is False and flags["gradient_as_bucket_view"] is True
    sync = flags["forward_sync_buffers"] if flags["forward_sync_buffers"] is not None else flags["broadcast_buffers"]
    assert sync is not arch.endswith("_frozen_bn")  # buffers synchronised per forward only while BN trains
    try:
        model = build(arch)
        for step in range(STEPS):
            model.zero_grad(set_to_none=True)
            for rank in (0, 1):
                forward_backward(model, step, rank)
            expected = {n: p.grad / 2 for n, p in model.named_parameters() if p.requires_grad}
            got = torch.load(ddp_gradients / f"{arch}.{step}.pt")
            assert set(got) == set(expected)
            for name, grad in expected.items():
                torch.testing.assert_close(got[name], grad, rtol=1e-6, atol=1e-10, msg=f"{arch} step {step}: {name}")
    finally:
        torch.set_num_threads(previous)
