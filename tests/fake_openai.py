"""A small OpenAI-compatible completions server for load-stage tests where no real engine is wanted:
it waits `first_token_delay_s` (its prefill), then streams `max_tokens` tokens per request, one every
`token_delay_s`, from a thread of the test."""

import asyncio
import json

from aiohttp import web

from tests.threaded_app import ThreadedApp


class FakeOpenAI(ThreadedApp):
    def __init__(self, model: str = "candidate", token_delay_s: float = 0.001, first_token_delay_s: float = 0.0):
        super().__init__()
        self.model, self.token_delay_s, self.first_token_delay_s = model, token_delay_s, first_token_delay_s

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await reply.prepare(request)
        await asyncio.sleep(self.first_token_delay_s)
        for _ in range(body["max_tokens"]):
            await asyncio.sleep(self.token_delay_s)
            await reply.write(f"data: {json.dumps({'choices': [{'index': 0, 'text': ' tok'}]})}\n\n".encode())
        usage = {"choices": [], "usage": {"completion_tokens": body["max_tokens"]}}
        await reply.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        return reply

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        return app


class FakeScoringEngine(ThreadedApp):
    """vLLM's /v1/completions as the quality stages call it (validation.scoring.ServedScorer), answered
    by real models through transformers, one request at a time: each served name's model folder in
    `models`, loaded on `compute` (awq_core.compute.Resolved; default: this host's choice).
    prompt_logprobs and token_ids come back in vLLM's JSON shape; `drop_logprobs` answers without
    them, as a server that does not return them would."""

    def __init__(self, models: dict[str, str], compute=None, drop_logprobs: bool = False):
        super().__init__()
        self.models, self.compute, self.drop_logprobs, self.requests = models, compute, drop_logprobs, 0
        self._scorers: dict = {}

    def _scorer(self, name: str):
        from validation.models import load_model
        from validation.scoring import ModelScorer, end_of_sequence_ids

        if name not in self._scorers:
            eos = end_of_sequence_ids(self.models[name])
            self._scorers[name] = ModelScorer(load_model(self.models[name], self.compute), eos, min(eos, default=0))
        return self._scorers[name]

    async def _completions(self, request: web.Request) -> web.Response:
        from validation.scoring import Request

        body = await request.json()
        self.requests += 1
        ids, scored = body["prompt"], "prompt_logprobs" in body
        asked = Request(tuple(ids), 1 if scored else len(ids), body["max_tokens"])
        reply = self._scorer(body["model"]).score([asked], batch_size=1)[0]
        choice = {"index": 0, "text": "", "token_ids": reply.generated}
        if scored and not self.drop_logprobs:
            scored_tokens = zip(ids[1:], reply.logprobs, strict=True)
            entries = [{str(token): {"logprob": lp, "rank": 1, "decoded_token": ""}} for token, lp in scored_tokens]
            choice["prompt_logprobs"] = [None] + entries
        return web.json_response({"choices": [choice]})

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        return app
