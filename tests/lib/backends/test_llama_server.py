"""The `llama-server` backend: llama.cpp's own server, started and stopped by the process that uses it.

The negotiation test needs the native build (`bash scripts/build_llama_server.sh`, about 5 minutes on 2 cores, cached
per CPU under ~/.cache/agreemate/llama-server/); where it is not built the test says so and is skipped."""

import os
import signal

import pytest

from agreemate_lib.backends.llama_server import LlamaServerMissing, cached_binary, stop_all
from agreemate_lib.backends.registry import make_backend
from agreemate_lib.core.scenarios import sample_scenarios
from agreemate_lib.negotiation.agents import Agent, AgentSpec
from agreemate_lib.negotiation.runner import RunConfig, run_negotiations


def test_a_missing_binary_is_a_clear_error(tmp_path):
    spec = AgentSpec(id="ls", backend="llama-server", model="smollm2", binary=str(tmp_path / "llama-server"))
    with pytest.raises(LlamaServerMissing, match="build_llama_server.sh"):
        make_backend(spec)
    with pytest.raises(ValueError, match="needs a GGUF file"):
        make_backend(AgentSpec(id="ls", backend="llama-server", model="some/hf-model", binary=cached_binary()
                               or str(tmp_path / "x")))


@pytest.mark.slow
@pytest.mark.skipif(cached_binary() is None and not os.environ.get("AGREEMATE_LLAMA_SERVER"),
                    reason="llama-server is not built for this CPU: bash scripts/build_llama_server.sh")
def test_agents_on_a_started_server_then_a_killed_one():
    """Both agents of a pair share one started server and negotiate (structured replies parse); when the server is
    killed, the next negotiations end as errors (kept out of the metrics), not as deals or rejections; the
    process's servers are stopped at the end."""
    spec = AgentSpec(id="ls", backend="llama-server", model="smollm2", temperature=0.0, slots=4, threads=2)
    buyer, seller = Agent(spec, make_backend(spec)), Agent(spec, make_backend(spec))
    assert buyer.backend.server is seller.backend.server and buyer.backend.server.running()
    scen = sample_scenarios("test", 3, 0).scenarios
    negs = run_negotiations(scen[:2], buyer, seller, RunConfig(max_turns=4, seed=0))
    turns = [t for n in negs for t in n.turns]
    assert turns and all(t.parse_ok for t in turns) and all(n.outcome != "error" for n in negs)
    server = buyer.backend.server
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(30)
    dead = run_negotiations(scen[2:], Agent(spec, buyer.backend), Agent(spec, seller.backend),
                            RunConfig(max_turns=4, seed=0))
    assert [n.outcome for n in dead] == ["error"] and "ConnectError" in dead[0].error
    stop_all()
    assert not server.running()
