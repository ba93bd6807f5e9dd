"""What the first CUDA job would have met, checked on CPU (issue 19, items 2-4): the rendezvous
port, a resume that sees fewer GPUs (a fake torch.cuda), and the float32 mode a run records."""
from __future__ import annotations

import datetime
import socket

import pytest
import torch

from scnet.engine import distributed
from scnet.engine.checkpoint import load_checkpoint, save_checkpoint
from scnet.engine.distributed import (RENDEZVOUS_PORTS, DistEnv, RendezvousError, detect_dist_env,
                                      slurm_rendezvous_port)
from scnet.engine.precision import apply_float32_mode, float32_mode, float32_settings
from scnet.engine.run_config import RunConfig
from scnet.engine.rng_state import capture_rng_state, restore_rng_state

# ------------------------------------------------------------------------------ item 2: the port

EPHEMERAL = range(32768, 61000)  # Linux's default net.ipv4.ip_local_port_range


def test_slurm_rendezvous_ports_stay_below_the_ephemeral_range():
    assert RENDEZVOUS_PORTS.stop <= EPHEMERAL.start
    ports = {slurm_rendezvous_port(job) for job in range(100_000, 150_000)}
    assert min(ports) >= RENDEZVOUS_PORTS.start and max(ports) < EPHEMERAL.start
    assert len(ports) > 10_000  # job ids spread over the whole range
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_NODELIST": "gpu[01-02]", "SLURM_JOB_ID": "45000"}
    assert detect_dist_env(env).master_port == slurm_rendezvous_port(45000) < EPHEMERAL.start


def test_a_taken_rendezvous_port_is_named_in_the_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        dist_env = DistEnv(rank=0, world_size=2, master_addr="127.0.0.1", master_port=port, launcher="slurm")
        with pytest.raises(RendezvousError) as caught:
            distributed.init_distributed(dist_env, torch.device("cpu"))
    message = str(caught.value)
    assert f"rendezvous port {port} on 127.0.0.1" in message and "EADDRINUSE" in message
    assert "MASTER_PORT" in message
    assert not distributed.is_initialized()


def test_rendezvous_waits_with_the_patient_timeout(monkeypatch):
    """The store every rank meets at gets the patient timeout; the group keeps the short one."""
    seen = {}

    def fake_rendezvous(url, rank, world_size, timeout):
        seen["timeout"] = timeout
        raise RuntimeError("stop here")

    monkeypatch.setattr(distributed.dist, "rendezvous", fake_rendezvous)
    with pytest.raises(RuntimeError, match="stop here"):
        distributed.init_distributed(DistEnv(rank=1, world_size=2, master_port=1), torch.device("cpu"))
    assert seen["timeout"] == distributed.PATIENT_TIMEOUT > datetime.timedelta(minutes=29)


# ----------------------------------------------------------------- item 3: fewer GPUs after a requeue

class FakeCuda:
    """torch.cuda's generator functions over `count` devices, each with its own state."""

    def __init__(self, count: int, current: int) -> None:
        self.count, self.current = count, current
        self.states = {i: torch.full((16,), i, dtype=torch.uint8) for i in range(8)}
        self.restored: list[tuple[int, torch.Tensor]] = []

    def _index(self, device) -> int:
        index = self.current if device in ("cuda", None) else int(device)
        if index >= self.count:
            raise IndexError(f"device {index} of {self.count}")
        return index

    def install(self, monkeypatch) -> None:
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(cuda, "get_rng_state", lambda device="cuda": self.states[self._index(device)].clone())
        monkeypatch.setattr(cuda, "get_rng_state_all", lambda: [self.states[i].clone() for i in range(self.count)])

        def set_rng_state(state, device="cuda"):
            self.restored.append((self._index(device), state))

        def set_rng_state_all(states):  # as torch does it: one device after the other
            for index, state in enumerate(states):
                set_rng_state(state, index)

        monkeypatch.setattr(cuda, "set_rng_state", set_rng_state)
        monkeypatch.setattr(cuda, "set_rng_state_all", set_rng_state_all)


def test_a_checkpoint_from_8_visible_gpus_resumes_with_1(monkeypatch, tmp_path):
    fake = FakeCuda(count=8, current=5)  # rank 5 of a node that saw all 8 GPUs
    fake.install(monkeypatch)
    path = save_checkpoint(tmp_path / "last.pth", {"rng": [capture_rng_state()]})
    saved = load_checkpoint(path)["rng"][0]  # read back as the resumed job reads it (weights_only)
    assert torch.equal(saved["cuda"], fake.states[5])  # this process's device only

    fake.count, fake.current = 1, 0  # requeued with per-task binding: its GPU is now cuda:0
    restore_rng_state(saved)
    assert len(fake.restored) == 1 and fake.restored[0][0] == 0
    assert torch.equal(fake.restored[0][1], fake.states[5])


def test_a_checkpoint_with_every_devices_state_still_resumes_with_fewer(monkeypatch):
    """Checkpoints written before held all visible devices' states; restoring them all on one
    GPU raised IndexError. Now the entry of this process's device index is restored."""
    fake = FakeCuda(count=8, current=3)
    fake.install(monkeypatch)
    old_layout = {**capture_rng_state(), "cuda": torch.cuda.get_rng_state_all()}
    fake.count, fake.current = 1, 0
    with pytest.raises(IndexError):  # what the old restore did
        torch.cuda.set_rng_state_all(old_layout["cuda"])
    fake.restored.clear()
    restore_rng_state(old_layout)
    assert [index for index, _ in fake.restored] == [0]


# -------------------------------------------------------------------------- item 4: float32 mode

def test_strict_fp32_is_part_of_the_run_id_only_when_asked_for():
    base = RunConfig(preset="mask_rcnn_r18_smoke", data_root="/data/x")
    strict = base.replace(strict_fp32=True)
    assert strict.run_id() != base.run_id()
    assert "strict_fp32" not in base.identity()  # runs made before the field keep their ids
    assert strict.identity()["strict_fp32"] is True
    assert RunConfig.from_dict(strict.to_dict()) == strict
    assert RunConfig.from_dict({k: v for k, v in base.to_dict().items() if k != "strict_fp32"}) == base


def test_float32_modes_set_and_report_the_flags():
    with float32_mode(strict=True):
        strict = float32_settings()
        apply_float32_mode(strict=False)
        default = float32_settings()
    assert strict["mode"] == "strict fp32" and not strict["cudnn_allow_tf32"] and not strict["matmul_allow_tf32"]
    assert default["cudnn_allow_tf32"] and not default["matmul_allow_tf32"]  # MMDetection 3.3.0's (PyTorch's)
    assert default["mode"].startswith("pytorch defaults")
    assert default["float32_matmul_precision"] == "highest"


def test_env_json_records_the_float32_mode(tmp_path):
    from scnet.engine.environment import collect_environment

    with float32_mode(strict=True):
        env = collect_environment()
    assert env["float32"]["mode"] == "strict fp32"
    assert {"cudnn_allow_tf32", "float32_matmul_precision", "cudnn_benchmark"} <= set(env["float32"])
