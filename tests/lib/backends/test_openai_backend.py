"""The OpenAI-compatible HTTP backend against real HTTP servers on 127.0.0.1: retries, faults, structured output."""

import socket

import pandas as pd
import pytest

from agreemate_lib.backends.base import ChatRequest, GenerationSettings, ReplyFormat
from agreemate_lib.backends.openai_http import OpenAIBackend
from agreemate_lib.core.scenarios import make_scenario
from agreemate_lib.negotiation.agents import Agent, AgentSpec
from agreemate_lib.negotiation.runner import RunConfig, run_negotiations

from .fake_openai_server import FakeOpenAI

MSGS = [{"role": "system", "content": "You sell a bike."}, {"role": "user", "content": "Hi"}]
SETTINGS = GenerationSettings(temperature=0.0, max_new_tokens=64)


def backend(url, **kw):
    return OpenAIBackend("test-model", base_url=url, backoff_s=0.01, **kw)


def one(b, fmt=ReplyFormat()):
    return b.generate([ChatRequest(list(MSGS), fmt, key="k")], SETTINGS)[0]


@pytest.mark.serial  # timed against a fake server's delays: alone, not beside another worker
@pytest.mark.parametrize("fault", ["429", "500", "empty", "slow"])
def test_fault_is_retried_then_succeeds(fault):
    with FakeOpenAI([fault, "ok"], slow_s=1.5) as srv:
        c = one(backend(srv.url, max_retries=2, timeout_s=0.5))
    assert c.error is None and '"offer"' in c.text
    assert len(srv.requests) == 2


@pytest.mark.serial  # timed against a fake server's delays: alone, not beside another worker
@pytest.mark.parametrize("fault,message", [("429", "HTTP 429"), ("500", "HTTP 500"), ("empty", "empty completion"),
                                           ("slow", "Timeout")])
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


@pytest.mark.serial  # timed against a fake server's delays: alone, not beside another worker
def test_many_requests_in_flight_with_bounded_concurrency():
    with FakeOpenAI(["slow"], slow_s=0.3) as srv:
        b = backend(srv.url, concurrency=8, timeout_s=5)
        import time

        t = time.perf_counter()
        outs = b.generate([ChatRequest(list(MSGS), key=str(i)) for i in range(16)], SETTINGS)
        elapsed = time.perf_counter() - t
    assert all(c.error is None for c in outs)
    assert elapsed < 16 * 0.3 / 2  # concurrent, not one after another


def test_cut_off_reply_is_the_models_not_a_server_fault():
    """finish_reason=length: returned at once as a truncated reply (the agent re-asks), not retried as an error."""
    with FakeOpenAI(["truncated"]) as srv:
        c = one(backend(srv.url, max_retries=2))
    assert c.error is None and c.truncated and len(srv.requests) == 1


@pytest.mark.serial  # timed against a fake server's delays: alone, not beside another worker
def test_turn_budget_bounds_all_tries():
    with FakeOpenAI(["slow"], slow_s=0.6) as srv:
        import time

        t = time.perf_counter()
        c = one(backend(srv.url, max_retries=5, timeout_s=0.5, turn_budget_s=1.0))
        elapsed = time.perf_counter() - t
    assert c.error and "turn budget of 1 s" in c.error and elapsed < 2.5


def test_dead_server_ends_the_negotiation_as_an_error_after_one_retry_layer():
    """A server that keeps failing: the negotiation ends as `error` on the first buyer turn, the agent does not
    re-ask on top of the backend's own tries, and the error is kept out of the metrics."""
    from agreemate_lib.evaluation.tables import negotiation_table, summarize

    sc = make_scenario("test", 0, title="Bike", description="d", category="bike", listing_price=200,
                       buyer_target=120, seller_target=200)
    with FakeOpenAI(["500"]) as srv:
        spec = AgentSpec(id="srv", backend="openai", model="m", base_url=srv.url, max_retries=2)
        b = Agent(spec, backend(srv.url, max_retries=1))
        s = Agent(AgentSpec(id="rb", backend="rule-based", model="rule-based"))
        neg = run_negotiations([sc], b, s, RunConfig(max_turns=4))[0]
        requests = len(srv.requests)
    assert requests == 2  # the backend's two tries; the agent's max_retries=2 did not multiply them
    assert neg.outcome == "error" and "HTTP 500" in neg.error and len(neg.turns) == 1
    assert neg.turns[0].backend_error and not neg.agreed
    row = summarize(negotiation_table([neg]), "pair").iloc[0]
    assert row["n"] == 0 and row["n_error"] == 1 and row["error_rate"] == 1.0
    assert pd.isna(row["agreement_rate"])  # not "0 agreement": no result at all


# --- a real OpenAI-compatible server: llama-cpp-python serving the embedded GGUF on 127.0.0.1 -------------------


@pytest.fixture(scope="module")
def llama_server():
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    from agreemate_lib.backends.models import gguf_path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()), "--host",
                             "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"llama_cpp.server exited with {proc.returncode}")
                time.sleep(0.5)
        else:
            pytest.fail("llama_cpp.server did not answer within 120 s")
        yield url
    finally:
        if proc.poll() is None:  # a server that died on start has no group left to signal
            os.killpg(proc.pid, 15)
        proc.wait(30)


def agent_requests(data_dir, n=3, acts=("counter-price", "inquire", "accept")):
    """Real seller prompts answering a buyer's offer on real listings."""
    from agreemate_lib.core.scenarios import sample_scenarios
    from agreemate_lib.negotiation.prompts import build_messages, system_prompt

    reqs = []
    for i, sc in enumerate(sample_scenarios("test", n, seed=0).scenarios):
        offer = {"speaker": "buyer", "action": "offer", "utterance": f"Would you take ${sc.buyer_target:.0f}?",
                 "price": sc.buyer_target}
        msgs = build_messages("seller", system_prompt("seller", sc.view_for("seller")), [offer], 14, False)
        reqs.append(ChatRequest(msgs, ReplyFormat(allowed_acts=acts), key=str(i)))
    return reqs


@pytest.mark.slow
def test_real_server_structured_replies(llama_server, data_dir):
    b = OpenAIBackend("smollm2", base_url=llama_server, concurrency=4)
    outs = b.generate(agent_requests(data_dir), GenerationSettings(temperature=0.0, max_new_tokens=96))
    from agreemate_lib.negotiation.parsing import parse_turn

    for c in outs:
        assert c.error is None and c.structured and c.tokens_out > 0, c
        t = parse_turn(c.text)
        assert t.ok and t.action in ("counter-price", "inquire", "accept"), c.text
    # llama-cpp-python speaks the json_object dialect: the backend fell back to it once and remembers
    assert b.response_format == "json_object" and len(b.downgrades) == 1


@pytest.mark.slow
def test_real_server_faults(llama_server, data_dir):
    b = OpenAIBackend("smollm2", base_url=llama_server, max_retries=1, backoff_s=0.01, response_format="json_object")
    c = b.generate([ChatRequest(list(MSGS), key="t")], GenerationSettings(temperature=0.0, max_new_tokens=3))[0]
    assert c.error is None and c.truncated  # cut off at the token limit: the model's unusable reply, not a fault
    slow = OpenAIBackend("smollm2", base_url=llama_server, max_retries=1, backoff_s=0.01, timeout_s=0.001)
    c = one(slow)
    assert c.error and "Timeout" in c.error


@pytest.mark.slow
def test_real_server_negotiation_partition(llama_server, tmp_path, dagster_home, data_dir):
    """A pair with a server-backed agent materializes; its turns are recorded with their raw replies."""
    import yaml
    from dagster import AssetKey, DagsterInstance

    from agreemate_assets.lib.resources import StudySettings
    from agreemate_assets.study import run_study

    roster = tmp_path / "agents.yaml"
    roster.write_text(yaml.safe_dump({"agents": [
        {"id": "server", "backend": "openai", "model": "smollm2", "base_url": llama_server,
         "response_format": "json_object", "temperature": 0.0, "max_new_tokens": 96},
        {"id": "rb", "backend": "rule-based", "model": "rule-based"}]}))
    study = StudySettings(results_dir=str(tmp_path / "r"), roster_path=str(roster), n_scenarios=2, max_turns=4)
    with DagsterInstance.get() as instance:
        assert all(run_study(instance, study, [("server", "rb")], log=lambda *_: None).values())
        md = instance.get_latest_materialization_event(AssetKey("negotiation_transcripts")).asset_materialization
        assert md.metadata["negotiations"].value == 2 and md.metadata["tokens_out"].value > 0
