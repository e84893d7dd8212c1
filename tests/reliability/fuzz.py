"""Generated malformed inputs for the reliability suite: prediction requests a client could get
wrong, and manifests an author could get wrong. Seeded, so a failure names a body that can be
sent again.

`malformed_requests(n, seed)` yields (category, body bytes) for a model taking rows of four
numbers (the test packages' `input_shape = (4,)`); every one of them must be answered 4xx."""

from __future__ import annotations

import base64
import json
import random
import string
from collections.abc import Callable, Iterator
from typing import Any

GOOD_ROW = [0.5, 1.0, -2.0, 3.25]


def _j(value: Any) -> bytes:
    return json.dumps(value).encode()


def _junk(rng: random.Random) -> Any:
    """A JSON value of a random kind."""
    return rng.choice([None, True, False, 0, -1, 3.5, "", "text", [], {}, [1, "a"], {"k": [1]}])


def _not_object(rng: random.Random) -> Any:
    return rng.choice([None, True, 7, -0.5, "meta", [], [1, 2], [{"a": 1}]])


def _bad_base64(rng: random.Random) -> str:
    good = base64.b64encode(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))).decode()
    cut = good[: max(1, len(good) - rng.randrange(1, 3))] if len(good) > 4 else good + "="
    return rng.choice([
        cut if len(cut) % 4 else cut + "A",            # wrong length
        "!!" + good,                                   # characters outside the alphabet
        good.replace("A", "*") + "*",
        "".join(rng.choice("$%&()[]{}") for _ in range(rng.randrange(1, 12))),
        good + "=" * 3,
    ])


def _bad_row(rng: random.Random) -> Any:
    return rng.choice([
        GOOD_ROW[:3], GOOD_ROW + [1.0], [], [GOOD_ROW], [[1.0, 2.0], [3.0, 4.0]],
        ["0.5", "1.0", "-2.0", "3.25"], [True, 1.0, 2.0, 3.0], [True, False, True, False], [None, 1.0, 2.0, 3.0],
        [{"x": 1}, 1.0, 2.0, 3.0], "some text", 7, None, True, {"row": GOOD_ROW},
        [1.0, 2.0, 3.0, [4.0]], [1.0, 2.0, 3.0, "4"],
    ])


def _with_boolean(rng: random.Random) -> list[Any]:
    row: list[Any] = list(GOOD_ROW)
    row[rng.randrange(len(row))] = rng.choice([True, False])
    return row


def _deep(depth: int) -> Any:
    value: Any = GOOD_ROW
    for _ in range(depth):
        value = [value]
    return value


CASES: dict[str, Callable[[random.Random], bytes]] = {
    "not JSON": lambda r: r.choice([
        b"{", b"}", b"{\"data\": ", b"\xff\xfe\x00", b"data=1&x=2", b"{'data': 1}", b"[1, 2,]", b"NaN",
        _j({"data": {"ndarray": [GOOD_ROW]}})[: r.randrange(1, 20)],
        bytes(r.randrange(256) for _ in range(r.randrange(1, 64))) + b"{",
    ]),
    "empty body": lambda r: r.choice([b"", b" ", b"\n"]),
    "not an object": lambda r: _j(r.choice([[GOOD_ROW], GOOD_ROW, 1, "data", None, True, [{"data": {}}]])),
    "no payload": lambda r: _j(r.choice([{}, {"meta": {}}, {"ndarray": [GOOD_ROW]}, {"Data": {"ndarray": [GOOD_ROW]}},
                                         {"instances": [GOOD_ROW]}])),
    "two payloads": lambda r: _j({"data": {"ndarray": [GOOD_ROW]},
                                  r.choice(["strData", "jsonData", "binData"]): r.choice(["x", {"instances": [1]},
                                                                                          "aGk="])}),
    "meta not an object": lambda r: _j({"data": {"ndarray": [GOOD_ROW]}, "meta": _not_object(r)}),
    "meta fields of the wrong type": lambda r: _j({"data": {"ndarray": [GOOD_ROW]}, "meta": r.choice([
        {"tags": _not_object(r)}, {"puid": r.choice([1, [], {}, True])},
        {"routing": r.choice(["a", [1], {"x": "y"}])}, {"requestPath": r.choice([1, [], {"x": 1}])},
        {"metrics": r.choice([{}, "m", [1]])}])}),
    "invalid base64": lambda r: _j({"binData": _bad_base64(r)}),
    "binData not a string": lambda r: _j({"binData": r.choice([1, [1, 2], {"b": "aGk="}, None, True])}),
    "strData not a string": lambda r: _j({"strData": r.choice([1, 2.5, [1, 2], {"s": "x"}, None, True])}),
    "text for a tensor model": lambda r: _j(r.choice([
        {"strData": r.choice(["hello", "1 2 3 4", "".join(r.choices(string.printable, k=30))])},
        {"binData": base64.b64encode(b"0.5,1.0,-2.0,3.25").decode()},
        {"data": {"ndarray": [r.choice(["a b c d", "text"])]}},
        {"data": {"ndarray": [["one", "two", "three", "four"]]}},
    ])),
    "jsonData of the wrong shape": lambda r: _j({"jsonData": r.choice([
        "text", 5, None, True, {"instances": "x"}, {"instances": [_bad_row(r)]}, {"other": [GOOD_ROW]},
        {"instances": [GOOD_ROW, GOOD_ROW[:2]]}])}),
    "data not an object": lambda r: _j({"data": _not_object(r)}),
    "data without ndarray or tensor": lambda r: _j({"data": r.choice([{}, {"names": ["a"]}, {"rows": [GOOD_ROW]},
                                                                      {"ndArray": [GOOD_ROW]}])}),
    "names of the wrong type": lambda r: _j({"data": {"names": r.choice(["a", 1, [1, 2], {"a": 1}]),
                                                      "ndarray": [GOOD_ROW]}}),
    "ndarray not a list": lambda r: _j({"data": {"ndarray": r.choice([GOOD_ROW[0], "x", {"0": GOOD_ROW}, None, True])}}),
    "ndarray empty": lambda r: _j({"data": {"ndarray": []}}),
    "row of the wrong shape or type": lambda r: _j({"data": {"ndarray": [GOOD_ROW] * r.randrange(0, 3) + [_bad_row(r)]}}),
    "booleans among numbers": lambda r: _j({"data": {"ndarray": [_with_boolean(r)]}}),
    "nested too deep": lambda r: _j({"data": {"ndarray": [_deep(r.randrange(1, 40))]}}),
    "tensor malformed": lambda r: _j({"data": {"tensor": r.choice([
        {"shape": [1, 4], "values": GOOD_ROW[:3]}, {"shape": [-1, 4], "values": GOOD_ROW},
        {"shape": [1.5, 4], "values": GOOD_ROW}, {"shape": "1x4", "values": GOOD_ROW}, {"values": GOOD_ROW},
        {"shape": [1, 4], "values": ["a", "b", "c", "d"]}, {"shape": [1, 4], "values": [True, 1, 2, 3]},
        {"shape": [2, 2], "values": GOOD_ROW}, {"shape": [4], "values": GOOD_ROW}, [1, 4], "tensor"])}}),
    "too many rows": lambda r: _j({"data": {"ndarray": [GOOD_ROW] * (10_001 + r.randrange(100))}}),
}


def malformed_requests(n: int = 1000, seed: int = 21) -> Iterator[tuple[str, bytes]]:
    """`n` malformed requests, every category in turn (the few large ones rarely)."""
    rng = random.Random(seed)
    names = [c for c in CASES if c != "too many rows"]
    for i in range(n):
        name = "too many rows" if i % 200 == 199 else names[i % len(names)]
        yield name, CASES[name](rng)
