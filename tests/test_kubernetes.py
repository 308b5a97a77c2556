"""Kubernetes: what holds without a cluster. The definitions load with the k8s executor; the GPU steps'
op tags become, through dagster-k8s's own job builder, pods on the policy's GPU nodes; the Helm values
configure Dagster as its own config schemas accept; the staging server's manifests are valid
Kubernetes objects serving the release's launch config; the image builds where docker runs."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes
import pytest
import torch
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config_schema
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config
from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict

from awq_core import QuantConfig, quantize
from awq_release.errors import ValidationError
from deploy.engine import Serving, engine_args
from orchestrator.cli import main
from orchestrator.placement import executor, load_op_tags
from orchestrator.policy import ReleasePolicy, TargetGPU, Toleration, parse_policy
from tests.conftest import make_tiny_model

ROOT = Path(__file__).resolve().parent.parent
VALUES = ROOT / "deploy" / "kubernetes" / "values.yaml"
DATA_VOLUME = ROOT / "deploy" / "kubernetes" / "data-volume.yaml"
GPU_STEPS = ("awq_model", "perplexity_validation", "tasks_validation", "long_context_validation", "power_check")
TARGET_GPU = {
    "name": "H100 80GB",
    "memory_gib": 80,
    "per_node": 8,
    "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    "tolerations": [
        {"key": "nvidia.com/gpu"},
        {"key": "pool", "operator": "Equal", "value": "llm", "effect": "NoExecute"},
    ],
    "cpu": "12",
    "memory": "96Gi",
}
PRINT_PLACEMENT = """
import json
from orchestrator.definitions import defs
job = defs.resolve_job_def("release_job")
assets = {key.path[-1]: a for a in defs.assets for key in a.keys}
print(json.dumps({"executor": job.executor_def.name,
                  "steps": {name: {"pool": a.op.pool, "tags": dict(a.op.tags)} for name, a in assets.items()}}))
"""


def write_policy(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump({"target_gpu": TARGET_GPU, **sections}))
    return path


def k8s_env(home: Path, policy: Path, executor: str = "k8s") -> dict:
    return os.environ | {
        "AWQ_RELEASE_HOME": str(home),
        "AWQ_RELEASE_POLICY": str(policy),
        "AWQ_RELEASE_EXECUTOR": executor,
    }


def as_k8s(model: type, manifest: dict):
    """The Kubernetes client's object for a manifest; an unknown or misspelt field raises."""
    return k8s_model_from_dict(model, k8s_snake_case_dict(model, manifest))


def step_pod(tags: dict) -> kubernetes.client.V1PodSpec:
    """The pod the k8s_job_executor would start for a step with these op tags."""
    config = DagsterK8sJobConfig(job_image="awq-release:test", dagster_home="/opt/dagster/dagster_home")
    job = construct_dagster_k8s_job(
        config, ["dagster", "api", "execute_step"], "step", get_user_defined_k8s_config(tags)
    )
    return job.spec.template


@pytest.fixture(scope="module")
def placement(tmp_path_factory):
    """The definitions as the user deployment loads them: k8s executor, a policy with GPU nodes and a
    staging endpoint for the load stage; `dagster definitions validate` first, as the image's test."""
    tmp = tmp_path_factory.mktemp("k8s")
    policy = write_policy(tmp / "policy.yaml", validation={"load": {"endpoint": "http://vllm-staging:8000"}})
    env = k8s_env(tmp, policy)
    validate = [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "orchestrator.definitions"]
    checked = subprocess.run(validate, env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert "All code locations passed validation" in checked.stdout + checked.stderr
    printed = subprocess.run([sys.executable, "-c", PRINT_PLACEMENT], env=env, capture_output=True, text=True, cwd=ROOT)
    assert printed.returncode == 0, printed.stderr[-3000:]
    return json.loads(printed.stdout.splitlines()[-1])


def test_the_release_job_runs_a_pod_per_step_with_the_k8s_executor(placement):
    assert placement["executor"] == "k8s"


def test_gpu_steps_get_the_policys_gpu_nodes_and_are_never_evicted(placement):
    for name in GPU_STEPS:
        step = placement["steps"][name]
        assert step["pool"] == "gpu", name
        pod = step_pod(step["tags"])
        container = pod.spec.containers[0]
        assert container.resources.limits == {"memory": "96Gi", "nvidia.com/gpu": "1"}, name
        assert container.resources.requests == {"cpu": "12", "memory": "96Gi", "nvidia.com/gpu": "1"}, name
        assert pod.spec.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, name
        tolerations = [(t.key, t.operator, t.value, t.effect) for t in pod.spec.tolerations]
        assert tolerations == [("nvidia.com/gpu", "Exists", None, "NoSchedule"), ("pool", "Equal", "llm", "NoExecute")]
        assert pod.metadata.annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false", name


def test_steps_that_need_no_gpu_ask_for_none(placement):
    # The load stage drives the staging server named in load.endpoint: the GPUs are that server's.
    for name in ("checkpoint", "calibration_set", "load_validation", "release"):
        step = placement["steps"][name]
        assert "dagster-k8s/config" not in step["tags"], name
        assert step_pod(step["tags"]).spec.node_selector is None, name


def test_a_load_stage_that_starts_its_own_server_asks_for_its_tensor_parallel_gpus():
    policy = ReleasePolicy(
        target_gpu=TargetGPU(tolerations=(Toleration("gpu"),)), serving=Serving(tensor_parallel_size=2)
    )
    limits = step_pod(load_op_tags(policy)).spec.containers[0].resources.limits
    assert limits == {"memory": "64Gi", "nvidia.com/gpu": "2"}


def test_a_toleration_that_kubernetes_would_refuse_is_refused_in_the_policy(tmp_path):
    policy = write_policy(tmp_path / "policy.yaml")
    text = policy.read_text().replace("operator: Equal\n", "operator: Exists\n")
    with pytest.raises(ValidationError, match=r"key 'pool': operator Equal takes a value, Exists none"):
        parse_policy(text, str(policy))


def test_an_unknown_executor_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("AWQ_RELEASE_EXECUTOR", "slurm")
    with pytest.raises(ValidationError, match=r"AWQ_RELEASE_EXECUTOR='slurm': choose one of in_process, k8s"):
        executor()


def snake_case(mapping: dict) -> dict:
    return {re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower(): value for key, value in mapping.items()}


def rendered_instance(values: dict) -> dict:
    """The parts of dagster.yaml the chart renders from what our values set (its configmap-instance
    template: camelCase keys of runMonitoring and runRetries, snake_case in the instance)."""
    daemon = values["dagsterDaemon"]
    pools = values["concurrency"]["pools"]
    return {
        "run_monitoring": snake_case(daemon["runMonitoring"]),
        "run_retries": snake_case(daemon["runRetries"]),
        "concurrency": {"pools": snake_case(pools)},
    }


def test_helm_values_configure_dagster_as_its_own_schemas_accept():
    values = yaml.safe_load(VALUES.read_text())
    instance = rendered_instance(values)
    result = validate_config(dagster_instance_config_schema(), instance)
    assert result.success, [e.message for e in result.errors]
    monitoring = instance["run_monitoring"]
    # Pools need freed slots (a dead run's slot is otherwise held for good) and a dead worker is resumed.
    assert monitoring["enabled"] and monitoring["free_slots_after_run_end_seconds"] > 0
    assert monitoring["max_resume_run_attempts"] >= 1
    queued = snake_case(values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"])
    assert validate_config(QueuedRunCoordinator.config_type(), queued).success
    assert values["runLauncher"]["type"] == "K8sRunLauncher" and values["postgresql"]["enabled"] is False
    run_pod = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["containerConfig"]
    run_container = {"name": "dagster", **run_pod}  # dagster-k8s names the container: a partial one here
    as_k8s(kubernetes.client.V1Container, run_container)


def test_the_user_deployment_runs_our_image_as_the_code_location_with_shared_data():
    values = yaml.safe_load(VALUES.read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    assert cmd[:3] == ["dagster", "api", "grpc"] and deployment["dagsterApiGrpcArgs"] == cmd[3:5]
    assert f"EXPOSE {deployment['port']}" in dockerfile
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["AWQ_RELEASE_EXECUTOR"] == "k8s"
    (mount,) = deployment["volumeMounts"]
    assert env["AWQ_RELEASE_HOME"] == mount["mountPath"]
    (volume,) = deployment["volumes"]
    assert volume["name"] == mount["name"] and volume["persistentVolumeClaim"]["claimName"]
    as_k8s(kubernetes.client.V1Volume, volume)
    as_k8s(kubernetes.client.V1VolumeMount, mount)
    assert deployment["includeConfigInLaunchedRuns"]["enabled"]  # step pods get the volume and the env
    claim = as_k8s(kubernetes.client.V1PersistentVolumeClaim, yaml.safe_load(DATA_VOLUME.read_text()))
    assert claim.metadata.name == volume["persistentVolumeClaim"]["claimName"]
    assert claim.spec.access_modes == ["ReadWriteMany"]  # step pods on any node share it


@pytest.mark.skipif(
    not os.environ.get("DAGSTER_HELM_CHART"),
    reason="the Dagster chart is not reachable from here: set DAGSTER_HELM_CHART to an unpacked chart "
    "(helm pull dagster/dagster --untar) to check the values against its values.schema.json",
)
def test_helm_values_name_only_keys_the_charts_schema_knows():
    import jsonschema
    from referencing import Registry, Resource

    schema = json.loads((Path(os.environ["DAGSTER_HELM_CHART"]) / "values.schema.json").read_text())
    defaults = yaml.safe_load((Path(os.environ["DAGSTER_HELM_CHART"]) / "values.yaml").read_text())
    # Remote Kubernetes definitions cannot be fetched: each is taken as any object.
    registry = Registry(retrieve=lambda uri: Resource.from_contents({}))
    merged = _merge(defaults, yaml.safe_load(VALUES.read_text()))
    jsonschema.Draft7Validator(schema, registry=registry).validate(merged)


def _merge(base: dict, override: dict) -> dict:
    """Helm's merge of a values file over the chart's defaults: mappings deep, everything else replaced."""
    merged = dict(base)
    for key, value in override.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = _merge(base[key], value) if both else value
    return merged


def test_staging_server_serves_the_release_config_on_its_gpus(tmp_path, demo, monkeypatch, capsys):
    tiny = make_tiny_model(tmp_path / "tiny", demo.model_dir)
    calib = torch.randint(0, 1000, (2, 64))
    release = Path(quantize(tiny, tmp_path / "release", calib, QuantConfig(group_size=64), progress=False).out_dir)
    engine = engine_args(release, "tiny", Serving(tensor_parallel_size=2, max_model_len=2048))
    (release / "vllm-config.yaml").write_text(yaml.safe_dump(engine, sort_keys=False))
    monkeypatch.setenv("AWQ_RELEASE_POLICY", str(write_policy(tmp_path / "policy.yaml")))
    assert main(["staging", str(release), "--namespace", "staging", "--image", "vllm/vllm-openai:v0.11.0"]) == 0
    printed = capsys.readouterr()
    deployment, service = yaml.safe_load_all(printed.out)
    as_k8s(kubernetes.client.V1Deployment, deployment)
    as_k8s(kubernetes.client.V1Service, service)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = " ".join(container["args"])
    assert f"--model {release}" in args and "--quantization awq" in args and "--max-model-len 2048" in args
    assert "--tensor-parallel-size 2" in args and "--port 8000" in args
    assert container["resources"]["limits"] == {"memory": "96Gi", "nvidia.com/gpu": "2"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    assert pod["nodeSelector"] == TARGET_GPU["node_selector"] and len(pod["tolerations"]) == 2
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert "load.endpoint: http://release.staging.svc:8000" in printed.err


def docker_runs() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not docker_runs(), reason="no Docker engine runs on this machine (only the client, if any)")
def test_the_image_builds_and_validates_its_definitions():
    subprocess.run(["docker", "build", "-t", "awq-release:test", str(ROOT)], check=True, timeout=3600)
    validate = ["dagster", "definitions", "validate", "-m", "orchestrator.definitions"]
    result = subprocess.run(["docker", "run", "--rm", "awq-release:test", *validate], capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "All code locations passed validation" in output, output[-3000:]
