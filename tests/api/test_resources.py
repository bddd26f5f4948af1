import pytest
from pydantic import ValidationError

from tessera.api.jobs import SubmitJobRequest, TaskGroupSpec
from tessera.api.resources import GpuKind, GpuRequest, Resources

H100 = 81920  # MiB


@pytest.mark.parametrize(
    ("fields", "kind", "count", "demand"),
    [
        ({}, GpuKind.NONE, 0, (0, 0.0)),
        ({"gpus": 2}, GpuKind.WHOLE, 2, (H100, 100.0)),
        ({"gpus": 0.5}, GpuKind.FRACTION, 1, (H100 // 2, 50.0)),
        ({"gpu_memory": "20Gi"}, GpuKind.SLICE, 1, (20480, 25.0)),  # compute follows memory share
        ({"gpu_compute": 30}, GpuKind.SLICE, 1, (24576, 30.0)),  # memory follows compute share
        ({"gpu_memory": "8Gi", "gpu_compute": 50}, GpuKind.SLICE, 1, (8192, 50.0)),
        ({"mig_profile": "1g.10gb"}, GpuKind.MIG, 1, (0, 0.0)),
    ],
)
def test_gpu_forms(fields: dict, kind: GpuKind, count: int, demand: tuple[int, float]) -> None:
    req = GpuRequest.model_validate(fields)
    assert req.kind is kind
    assert req.gpu_count == count
    assert req.demand_on(H100) == demand


def test_missing_share_is_relative_to_the_chosen_gpu() -> None:
    req = GpuRequest(gpu_memory=8192)
    assert req.demand_on(16384) == (8192, 50.0)  # half of a 16 GiB GPU
    assert req.demand_on(81920) == (8192, 10.0)  # a tenth of an 80 GiB GPU
    assert req.charge_on(16384) == 0.5
    assert GpuRequest(gpu_memory=8192, gpu_compute=90).charge_on(81920) == 0.9


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"gpu_compute": 0}, "greater than or equal to 1"),
        ({"gpu_compute": 101}, "less than or equal to 100"),
        ({"gpus": 1.5}, "whole GPUs"),
        ({"gpus": 0}, "gpus must be > 0"),
        ({"gpus": -1}, "greater than or equal to 0"),
        ({"gpus": 0.5, "gpu_memory": "4Gi"}, "cannot be combined"),
        ({"mig_profile": "1g.10gb", "gpu_compute": 20}, "cannot be combined"),
        ({"mig_profile": "big"}, "MIG profile like 1g.10gb"),
        ({"gpu_memory": "-4Gi"}, "negative"),
        ({"gpu_memory": "lots"}, "512Mi, 10Gi or 10GiB"),
        ({"gpu_memory": "0Mi"}, "positive"),
        ({"gpu_memroy": "4Gi"}, "Extra inputs"),
    ],
)
def test_bad_gpu_requests(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GpuRequest.model_validate(fields)


def test_model_allow_list() -> None:
    req = GpuRequest(gpus=1, gpu_models=["a100", "H200"])
    assert req.fits_model("NVIDIA A100-SXM4-80GB")
    assert req.fits_model("NVIDIA H200")
    assert not req.fits_model("Tesla T4")
    assert GpuRequest(gpus=1).fits_model("anything")


def test_cpu_spellings() -> None:
    assert Resources(cpu="500m").cpu == 0.5
    assert Resources(cpu="2").cpu == 2
    with pytest.raises(ValidationError, match="millicores"):
        Resources(cpu="two")


def test_group_gang_and_env_checks() -> None:
    group = TaskGroupSpec(command=["x"], replicas=4, min_available=2)
    assert group.gang_size == 2
    assert TaskGroupSpec(command=["x"], replicas=3).gang_size == 3
    with pytest.raises(ValidationError, match="cannot exceed replicas"):
        TaskGroupSpec(command=["x"], replicas=2, min_available=3)
    with pytest.raises(ValidationError, match="environment variable name"):
        TaskGroupSpec(command=["x"], env={"1BAD": "v"})


def test_priority_names_and_numbers() -> None:
    base = {"groups": [{"command": ["x"]}]}
    assert SubmitJobRequest.model_validate({**base, "priority": "high"}).priority == 1000
    assert SubmitJobRequest.model_validate({**base, "priority": "7"}).priority == 7
    with pytest.raises(ValidationError, match="low, normal, high"):
        SubmitJobRequest.model_validate({**base, "priority": "urgent"})


def test_job_names_are_dns_labels() -> None:
    with pytest.raises(ValidationError, match="DNS label"):
        SubmitJobRequest.model_validate({"name": "Bad_Name", "groups": [{"command": ["x"]}]})
