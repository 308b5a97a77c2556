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
