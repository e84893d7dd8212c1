"""The serving floor: a minimal aiohttp + orjson server around the same `CdlPredictor`.

It speaks the Seldon protocol (`POST /api/v1.0/predictions`, `{"data": {"ndarray": rows}}`) and
does nothing a model server could skip: read the body, parse it with orjson, call
`CdlPredictor.predict_rows` (the same input checks), write the answer with orjson. The benchmark
measures every real server against it.

    python bench/floor_server.py --package DIR --port P
"""

from __future__ import annotations

import argparse

import orjson
from aiohttp import web

from cdl.runtime.serving import EXAMPLES_TAG, MODEL_MS_TAG, CdlPredictor, InvalidInput


def app(predictor: CdlPredictor) -> web.Application:
    async def predict(request: web.Request) -> web.Response:
        try:
            rows = orjson.loads(await request.read())["data"]["ndarray"]
            out = predictor.predict_rows(rows)
        except (InvalidInput, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            return web.Response(status=400, body=orjson.dumps({"status": {"code": 400, "info": str(exc)}}),
                                content_type="application/json")
        body = {"data": {"names": [], "ndarray": out},
                "meta": {"tags": {MODEL_MS_TAG: round(predictor._last_ms, 4), EXAMPLES_TAG: len(out)}}}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="pong")

    application = web.Application(client_max_size=64 * 1024 * 1024)
    application.router.add_post("/api/v1.0/predictions", predict)
    application.router.add_get("/health/ping", ping)
    return application


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--package", required=True)
    parser.add_argument("--predictor", default=None)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    predictor = CdlPredictor(model_package=args.package, predictor=args.predictor)
    predictor.load()
    web.run_app(app(predictor), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
