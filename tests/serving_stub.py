"""An OpenAI-like server that fails on purpose, served in a thread of the test
process (uvicorn): the failure paths of the client, the load driver and the
serve scenario."""

import asyncio
import itertools
import json
import threading
import time
from contextlib import contextmanager

from effbench.serving.managed import free_port

KINDS = ["ok", "http500", "stall", "not_json", "error_event", "cut"]


def stub_app(stall_s=30.0, usage=True, step_s=0.01, kinds=KINDS):
    """An OpenAI-like server: request k (in arrival order) behaves as kinds[k % len(kinds)];
    every chunk holds "ab" (two tokens when a token is a character)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI()
    counter = itertools.count()

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "stub"}]}

    @app.post("/v1/completions")
    async def completions(body: dict):
        kind = kinds[next(counter) % len(kinds)]
        if kind == "http500":
            return JSONResponse({"error": "boom"}, status_code=500)

        async def events():
            if kind == "stall":
                await asyncio.sleep(stall_s)
            for k in range(body["max_tokens"]):
                yield f"data: {json.dumps({'choices': [{'index': 0, 'text': 'ab'}]})}\n\n"
                if k == 1 and kind == "not_json":
                    yield "data: {not json\n\n"
                if k == 1 and kind == "error_event":
                    yield 'data: {"error": "worker died"}\n\n'
                if k == 1 and kind == "cut":
                    return
                await asyncio.sleep(step_s)
            last = {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}
            if usage:
                last["usage"] = {"prompt_tokens": 3, "completion_tokens": 2 * body["max_tokens"]}
            yield f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@contextmanager
def serving(app):
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
