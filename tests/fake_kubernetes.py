"""A small Kubernetes API server for the staging server's lifecycle tests, where no cluster is at hand:
the namespaced Deployments, Services, Pods and pod logs that deploy.cluster uses, over real HTTP, so
the real Kubernetes client talks to it through a kubeconfig. A Deployment gets one pod, which plays
`scenario`: "ready" (ready after `ready_after` reads of the Deployment), "crash" (vLLM exits, the
kubelet restarts it) or "unschedulable" (no GPU node free). Every request is kept in `requests`."""

from pathlib import Path

import yaml
from aiohttp import web

from tests.threaded_app import ThreadedApp

CORE, APPS = "/api/v1/namespaces/{namespace}", "/apis/apps/v1/namespaces/{namespace}"


class FakeKubernetes(ThreadedApp):
    def __init__(self, scenario: str = "ready", ready_after: int = 2):
        super().__init__()
        self.scenario, self.ready_after = scenario, ready_after
        self.deployments: dict[str, dict] = {}
        self.services: dict[str, dict] = {}
        self.restarts = 0  # of the pod's vLLM container; a test may raise it mid-load
        self.requests: list[tuple[str, str]] = []
        self._reads = 0

    def kubeconfig(self, path: Path) -> Path:
        cluster = {"name": "fake", "cluster": {"server": self.base_url}}
        context = {"name": "fake", "context": {"cluster": "fake", "user": "fake"}}
        config = {"clusters": [cluster], "contexts": [context], "users": [{"name": "fake", "user": {}}]}
        path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "current-context": "fake", **config}))
        return path

    def pod(self, name: str) -> dict:
        state = {"waiting": {"reason": "ContainerCreating"}}
        conditions, last_state = [], {}
        if self.scenario == "unschedulable":
            message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
            conditions = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]
        elif self.scenario == "crash":
            state = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container"}}
            last_state = {"terminated": {"exitCode": 1, "reason": "Error"}}
        elif self._reads >= self.ready_after:
            state = {"running": {}}
        restarts = 1 if self.scenario == "crash" else self.restarts
        status = {"name": "vllm", "image": "", "imageID": "", "ready": "running" in state, "restartCount": restarts}
        return {
            "metadata": {"name": f"{name}-pod", "labels": {"app.kubernetes.io/instance": name}},
            "status": {
                "phase": "Running" if "running" in state else "Pending",
                "conditions": conditions,
                "containerStatuses": [status | {"state": state, "lastState": last_state}],
            },
        }

    async def _create(self, request: web.Request, store: dict) -> web.Response:
        body = await request.json()
        name = body["metadata"]["name"]
        if name in store:
            return web.json_response(
                {"kind": "Status", "reason": "AlreadyExists", "code": 409, "message": f"{name} exists"}, status=409
            )
        store[name] = body
        return web.json_response(body, status=201)

    async def _delete(self, request: web.Request, store: dict) -> web.Response:
        if store.pop(request.match_info["name"], None) is None:
            return web.json_response({"kind": "Status", "reason": "NotFound", "code": 404}, status=404)
        return web.json_response({"kind": "Status", "status": "Success"})

    async def _deployment(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.deployments:
            return web.json_response({"kind": "Status", "reason": "NotFound", "code": 404}, status=404)
        self._reads += 1
        ready = self.pod(name)["status"]["containerStatuses"][0]["ready"]
        return web.json_response(self.deployments[name] | {"status": {"readyReplicas": 1 if ready else 0}})

    async def _pods(self, request: web.Request) -> web.Response:
        name = request.query["labelSelector"].split("=", 1)[1]
        items = [self.pod(name)] if name in self.deployments else []
        return web.json_response({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})

    async def _own_pod(self, request: web.Request) -> web.Response:
        """The pod the step runs in, as the fake's one step pod (uid "step-uid")."""
        return web.json_response({"metadata": {"name": request.match_info["name"], "uid": "step-uid"}})

    async def _log(self, request: web.Request) -> web.Response:
        previous = request.query.get("previous", "").lower() == "true"
        return web.Response(text="RuntimeError: CUDA out of memory\n" if previous else "INFO vLLM API server\n")

    def application(self) -> web.Application:
        @web.middleware
        async def record(request: web.Request, handler):
            self.requests.append((request.method, request.path))
            return await handler(request)

        app = web.Application(middlewares=[record])
        stores = {f"{APPS}/deployments": self.deployments, f"{CORE}/services": self.services}
        for collection, store in stores.items():
            app.router.add_post(collection, lambda request, store=store: self._create(request, store))
            app.router.add_delete(collection + "/{name}", lambda request, store=store: self._delete(request, store))
        app.router.add_get(f"{APPS}/deployments/{{name}}", self._deployment)
        app.router.add_get(f"{CORE}/pods", self._pods)
        app.router.add_get(f"{CORE}/pods/{{name}}", self._own_pod)
        app.router.add_get(f"{CORE}/pods/{{name}}/log", self._log)
        return app
