"""A small OpenAI-compatible completions server for load-stage tests where no real engine is wanted:
it waits `first_token_delay_s` (its prefill), then streams `max_tokens` tokens per request, one every
`token_delay_s`, from a thread of the test."""

import asyncio
import json
import threading

from aiohttp import web

from deploy.server import free_port


class FakeOpenAI:
    def __init__(self, model: str = "candidate", token_delay_s: float = 0.001, first_token_delay_s: float = 0.0):
        self.model, self.token_delay_s, self.first_token_delay_s = model, token_delay_s, first_token_delay_s
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

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

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def __enter__(self) -> "FakeOpenAI":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
