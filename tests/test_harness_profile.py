"""SLURM profiles: the documented example loads, and every mistake names the file, key and fix."""
from __future__ import annotations

from pathlib import Path

import pytest

from experiments.profile import ProfileError, load_profile, parse_time_minutes, profile_from_dict

PROFILES = Path(__file__).resolve().parents[1] / "slurm" / "profiles"


def test_example_profile_asks_for_one_task_per_gpu():
    profile = load_profile(PROFILES / "example.toml")
    params = profile.submitit_parameters("scnet-table2")
    assert params["gpus_per_node"] == 8 and params["ntasks_per_node"] == 8
    assert params["partition"] == "gpu" and params["time"] == 24 * 60 and params["mem"] == "400G"
    assert "account" not in params  # empty string: the cluster's default
    assert "--gpus-per-node=8" in profile.sbatch_flags()


def test_cpu_profile_runs_one_task():
    profile = load_profile(PROFILES / "local.toml")
    assert profile.tasks_per_node == 1
    assert "gpus_per_node" not in profile.submitit_parameters("x")


@pytest.mark.parametrize("raw, expected", [
    ({"partiton": "gpu"}, "did you mean 'partition'"),
    ({"gpus_per_nodes": 8}, "did you mean 'gpus_per_node'"),
    ({"nodes": "2"}, "'nodes' must be an integer"),
    ({"nodes": 0}, "'nodes' must be >= 1"),
    ({"time": "two days"}, "not a SLURM time"),
    ({"setup": ["ok", 3]}, "'setup' must be a list of strings"),
    ({"sbatch": {"output": "/tmp/x"}}, "set by the harness"),
    ({"sbatch": {"partition": "gpu"}}, "write `partition = ...`"),
    ({"sbatch": {"mem": "10G"}}, "write `mem_gb = ...`"),
])
def test_profile_mistakes_are_named(raw, expected):
    with pytest.raises(ProfileError) as info:
        profile_from_dict(raw, "cluster.toml")
    assert expected in str(info.value) and "cluster.toml" in str(info.value)


def test_extra_sbatch_options_pass_through():
    profile = profile_from_dict({"sbatch": {"mail-type": "END", "exclusive": True, "requeue": False}}, "p")
    assert profile.submitit_parameters("x")["additional_parameters"] == {"mail-type": "END", "exclusive": True}
    assert "--exclusive" in profile.sbatch_flags() and "--mail-type=END" in profile.sbatch_flags()


@pytest.mark.parametrize("text, minutes", [
    (90, 90), ("90", 90), ("01:30:00", 90), ("1-00:00:00", 1440), ("2-12", 3600), ("10:30", 11),
])
def test_slurm_time_formats(text, minutes):
    assert parse_time_minutes(text, "p") == minutes


def test_missing_and_broken_profile_files(tmp_path):
    with pytest.raises(ProfileError, match="file not found"):
        load_profile(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("partition = \n")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(broken)


def test_a_profile_that_is_a_folder_or_not_text(tmp_path):
    with pytest.raises(ProfileError, match="a folder, not a file"):
        load_profile(tmp_path)
    binary = tmp_path / "cluster.toml"
    binary.write_bytes(b"partition = \"gpu\"\n\xff\xfe\x00")
    with pytest.raises(ProfileError, match="not UTF-8 text") as err:
        load_profile(binary)
    assert str(binary) in str(err.value) and "\n" not in str(err.value)
