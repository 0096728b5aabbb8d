"""The OpenAI-compatible HTTP backend against real HTTP servers on 127.0.0.1: retries, faults, structured output."""

import socket

import pytest

from agreemate_lib.agents import Agent, AgentSpec
from agreemate_lib.backends.base import ChatRequest, GenerationSettings, ReplyFormat
from agreemate_lib.backends.openai_http import OpenAIBackend
from agreemate_lib.runner import RunConfig, run_negotiations
from agreemate_lib.scenarios import make_scenario

from .fake_openai_server import FakeOpenAI

MSGS = [{"role": "system", "content": "You sell a bike."}, {"role": "user", "content": "Hi"}]
SETTINGS = GenerationSettings(temperature=0.0, max_new_tokens=64)


def backend(url, **kw):
    return OpenAIBackend("test-model", base_url=url, backoff_s=0.01, **kw)


def one(b, fmt=ReplyFormat()):
    return b.generate([ChatRequest(list(MSGS), fmt, key="k")], SETTINGS)[0]


@pytest.mark.parametrize("fault", ["429", "500", "empty", "truncated", "slow"])
def test_fault_is_retried_then_succeeds(fault):
    with FakeOpenAI([fault, "ok"], slow_s=1.5) as srv:
        c = one(backend(srv.url, max_retries=2, timeout_s=0.5))
    assert c.error is None and '"offer"' in c.text
    assert len(srv.requests) == 2


@pytest.mark.parametrize("fault,message", [("429", "HTTP 429"), ("500", "HTTP 500"), ("empty", "empty completion"),
                                           ("truncated", "truncated"), ("slow", "Timeout")])
def test_fault_that_persists_becomes_an_error(fault, message):
    with FakeOpenAI([fault], slow_s=1.0) as srv:
        c = one(backend(srv.url, max_retries=1, timeout_s=0.3))
    assert c.error and message in c.error and "2 tries" in c.error
    assert len(srv.requests) == 2


def test_connection_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = one(backend(f"http://127.0.0.1:{port}/v1", max_retries=1, timeout_s=1))
    assert c.error and "ConnectError" in c.error


def test_structured_output_request_carries_the_schema():
    fmt = ReplyFormat(cot=True, allowed_acts=("offer", "inquire"))
    with FakeOpenAI(["ok"]) as srv:
        one(backend(srv.url), fmt)
    rf = srv.requests[0]["response_format"]
    schema = rf["json_schema"]["schema"]
    assert rf["type"] == "json_schema" and schema["properties"]["action"]["enum"] == ["offer", "inquire"]
    assert list(schema["properties"])[0] == "reasoning"


def test_many_requests_in_flight_with_bounded_concurrency():
    with FakeOpenAI(["slow"], slow_s=0.3) as srv:
        b = backend(srv.url, concurrency=8, timeout_s=5)
        import time

        t = time.perf_counter()
        outs = b.generate([ChatRequest(list(MSGS), key=str(i)) for i in range(16)], SETTINGS)
        elapsed = time.perf_counter() - t
    assert all(c.error is None for c in outs)
    assert elapsed < 16 * 0.3 / 2  # concurrent, not one after another


def test_negotiation_completes_with_failed_turns_recorded():
    sc = make_scenario("test", 0, title="Bike", description="d", category="bike", listing_price=200,
                       buyer_target=120, seller_target=200)
    with FakeOpenAI(["500"]) as srv:
        spec = AgentSpec(id="srv", backend="openai", model="m", base_url=srv.url, max_retries=1)
        b = Agent(spec, backend(srv.url, max_retries=1))
        s = Agent(AgentSpec(id="rb", backend="rule-based", model="rule-based"))
        neg = run_negotiations([sc], b, s, RunConfig(max_turns=4))[0]
    buyer_turns = [t for t in neg.turns if t.speaker == "buyer"]
    assert len(neg.turns) == 4 and not neg.agreed  # it ran to its end despite the dead buyer
    assert all(not t.parse_ok and "HTTP 500" in t.error for t in buyer_turns)
