"""The backend registry: every backend is reachable from the roster, and a new one is one file plus one line."""

import json
import sys
import textwrap

import pytest

from agreemate_lib.backends import registry
from agreemate_lib.backends.base import BackendConfig, ChatBackend
from agreemate_lib.negotiation.agents import Agent, AgentSpec, parse_agent_shorthand


@pytest.mark.parametrize("name", list(registry.BACKENDS))
def test_every_registered_backend_declares_itself(name):
    cls = registry.backend_class(name)
    assert issubclass(cls, ChatBackend) and cls.name == name
    assert issubclass(cls.Config, BackendConfig)
    assert cls.from_spec.__func__ is not ChatBackend.from_spec.__func__, f"{name} must build itself from a spec"


def test_backend_options_are_typed_per_backend():
    spec = AgentSpec(id="srv", backend="openai", model="m", base_url="http://127.0.0.1:1/v1", concurrency=4)
    assert spec.backend_config().concurrency == 4 and spec.options["timeout_s"] == 60.0
    assert AgentSpec(id="rb", backend="rule-based", beta=2.0).backend_config().beta == 2.0
    # a setting of another backend, an unknown backend, a bad value: clear errors that name the place
    with pytest.raises(ValueError, match="backend 'rule-based' has no setting 'base_url'.*its settings are beta"):
        AgentSpec(id="rb", backend="rule-based", base_url="http://x")
    with pytest.raises(ValueError,
                       match="unknown backend .vllm2.*transformers, openai, llama-cpp, llama-server, rule-based"):
        AgentSpec(id="x", backend="vllm2")
    with pytest.raises(ValueError, match="concurrency"):
        AgentSpec(id="srv", backend="openai", concurrency=0)
    with pytest.raises(ValueError, match="cannot run a LoRA adapter"):
        AgentSpec(id="srv", backend="openai", base_url="http://x", adapter="results/adapters/buyer")
    # backend settings shape the config hash
    a = AgentSpec(id="a", backend="rule-based", beta=0.5)
    assert a.config_hash() != AgentSpec(id="a", backend="rule-based", beta=0.6).config_hash()


def test_shorthand_reaches_every_backend():
    assert parse_agent_shorthand("llama-cpp:smollm2").backend == "llama-cpp"
    assert parse_agent_shorthand("hf:HuggingFaceTB/SmolLM2-135M-Instruct").backend == "transformers"
    s = parse_agent_shorthand("openai:m@http://127.0.0.1:9/v1")
    assert s.backend == "openai" and s.backend_config().base_url == "http://127.0.0.1:9/v1"


ECHO_BACKEND = '''
import json
from agreemate_lib.backends.base import BackendConfig, ChatBackend, Completion


class EchoConfig(BackendConfig):
    price_share: float = 0.8


class EchoBackend(ChatBackend):
    """Offers a fixed share of the listing price, then accepts."""

    name = "echo"
    Config = EchoConfig
    needs_model = False

    @classmethod
    def from_spec(cls, spec, **_):
        return cls(spec.backend_config().price_share)

    def __init__(self, share):
        self.share = share
        self.model_id = f"echo({share})"

    def generate(self, requests, settings):
        out = []
        for r in requests:
            st = r.context
            if st.other_last_price is not None:
                reply = {"action": "accept", "utterance": "Deal.", "price": None}
            else:
                price = round(self.share * st.view["listing_price"])
                reply = {"action": "offer", "utterance": f"How about ${price}?", "price": price}
            out.append(Completion(json.dumps(reply), structured=True))
        return out
'''


def test_a_new_backend_is_one_file_and_one_registry_line(tmp_path, monkeypatch):
    from agreemate_lib.core.scenarios import make_scenario
    from agreemate_lib.negotiation.runner import RunConfig, run_negotiations

    (tmp_path / "echo_backend.py").write_text(textwrap.dedent(ECHO_BACKEND))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.BACKENDS, "echo", "echo_backend:EchoBackend")  # the one registry line
    try:
        spec = AgentSpec(id="echo", backend="echo", price_share=0.9)  # its setting, typed by its Config
        seller = AgentSpec(id="rb", backend="rule-based")
        sc = make_scenario("test", 1, title="Bike", description="A bike.", category="bike", listing_price=200.0,
                           buyer_target=150.0, seller_target=200.0)
        negs = run_negotiations([sc], Agent(spec), Agent(seller), RunConfig(max_turns=6))
        first = negs[0].turns[0]
        assert first.action == "offer" and first.price == 180.0 and negs[0].outcome == "accepted"
    finally:
        sys.modules.pop("echo_backend", None)


@pytest.mark.slow
def test_llama_cpp_backend_from_the_roster(tmp_path):
    pytest.importorskip("llama_cpp")
    from agreemate_lib.backends.base import ChatRequest, GenerationSettings, ReplyFormat
    from agreemate_lib.negotiation.parsing import parse_turn
    from agreemate_lib.negotiation.roster import load_roster

    roster = tmp_path / "agents.yaml"
    roster.write_text("agents:\n  - {id: lc, backend: llama-cpp, model: smollm2, n_ctx: 2048, temperature: 0.0}\n")
    spec = load_roster(roster)["lc"]
    backend = registry.make_backend(spec)
    msgs = [{"role": "system", "content": "You are the buyer of a $200 bike. Reply with JSON: action, utterance, "
                                          "price."}, {"role": "user", "content": "Make your first offer."}]
    c = backend.generate([ChatRequest(msgs, ReplyFormat(allowed_acts=("offer",)))], GenerationSettings(0.0))[0]
    assert c.error is None and parse_turn(c.text).ok, c.text
    assert json.loads(c.text)["action"] == "offer"
