"""SLURM host lists: the rendezvous host of a multi-node job is the first host of the node list."""
from __future__ import annotations

import re
import shutil

import pytest

from scnet.engine.distributed import detect_dist_env
from scnet.engine.hostlist import expand_hostlist, parse_hostlist

CASES = [
    ("rack[1-2]-node[01-02]", ["rack1-node01", "rack1-node02", "rack2-node01", "rack2-node02"]),
    ("gpu[01-03,07],login1", ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]),
    ("a[9-10]", ["a9", "a10"]),
    ("a[009-011]", ["a009", "a010", "a011"]),
    ("n[1-2]x[1-2],solo", ["n1x1", "n1x2", "n2x1", "n2x2", "solo"]),
    ("node7", ["node7"]),
    ("dgx-[1-2].cluster", ["dgx-1.cluster", "dgx-2.cluster"]),
]


@pytest.mark.parametrize("hostlist, hosts", CASES)
def test_python_parser(hostlist, hosts):
    assert parse_hostlist(hostlist) == hosts


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="scontrol not installed (slurm/local-cluster.sh)")
@pytest.mark.parametrize("hostlist, hosts", CASES)
def test_python_parser_agrees_with_scontrol(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts == expand_hostlist(hostlist, use_scontrol=False)


@pytest.mark.parametrize("bad, why", [("bad[1-", "without ']'"), ("n[3-1]", "runs backwards"),
                                      ("a[x]", "not a number"), ("a]b", "without '['"), ("", "no host names")])
def test_malformed_lists_are_named(bad, why):
    with pytest.raises(ValueError, match=re.escape(why)):
        expand_hostlist(bad)


def test_multi_node_job_rendezvous_at_the_first_host():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5", "SLURM_JOB_ID": "123",
           "SLURM_JOB_NODELIST": "rack[1-2]-node[01-02]"}
    dist_env = detect_dist_env(env)
    assert dist_env.master_addr == "rack1-node01" and dist_env.rank == 5 and dist_env.world_size == 16
