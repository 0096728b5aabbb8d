"""Running negotiations: all negotiations of a model pair advance in lockstep, one batched call per side per turn.

Termination rules (see docs/metrics.md):
- ``accept`` ends the negotiation; the accepted price is the most recent price proposed by the *other* side. An
  accept with no standing offer from the other side ends it with no deal and the anomaly ``accept_without_offer``.
- ``reject`` / ``quit`` end it with no deal (outcome ``rejected`` / ``quit``).
- Reaching ``max_turns`` ends it with no deal (outcome ``no_deal``).
- A backend failure (no reply: the backend raised, timed out or refused) ends it as ``error``: not a result; it is
  kept out of every metric and counted in ``error_rate``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from agreemate_lib.core.records import Negotiation, Turn
from agreemate_lib.core.scenarios import Scenario
from agreemate_lib.negotiation.agents import Agent
from agreemate_lib.negotiation.state import TurnState


@dataclass(frozen=True)
class RunConfig:
    max_turns: int = 15
    buyer_opens: bool = True
    seed: int = 0
    replicates: int = 1
    mode: Literal["batched", "naive"] = "batched"

    def __post_init__(self):
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {self.max_turns}")
        if self.mode not in ("batched", "naive"):
            raise ValueError(f"mode must be 'batched' or 'naive', got {self.mode!r}")


def negotiation_id(buyer_id: str, seller_id: str, scenario_id: str, replicate: int) -> str:
    return f"{buyer_id}+{seller_id}:{scenario_id}:r{replicate}"


def other_role(role: str) -> str:
    return "seller" if role == "buyer" else "buyer"


def last_price_by(turns: Sequence[Turn], speaker: str) -> float | None:
    for t in reversed(turns):
        if t.speaker == speaker and t.price is not None:
            return t.price
    return None


def apply_turn(neg: Negotiation, turn: Turn, max_turns: int) -> bool:
    """Append a turn and apply the termination rules. Returns True when the negotiation has ended."""
    neg.turns.append(turn)
    if turn.action == "accept":
        price = last_price_by(neg.turns[:-1], other_role(turn.speaker))
        neg.ended_by = turn.speaker
        if price is None:
            neg.outcome = "no_deal"
            neg.anomalies.append(f"accept_without_offer@turn{turn.index}")
        else:
            neg.outcome, neg.accepted_price = "accepted", price
        return True
    if turn.action in ("reject", "quit"):
        neg.outcome = "rejected" if turn.action == "reject" else "quit"
        neg.ended_by = turn.speaker
        return True
    if len(neg.turns) >= max_turns:
        neg.outcome = "no_deal"
        return True
    return False


def history_for(turns: Sequence[Turn], role: str) -> list[dict[str, Any]]:
    """The turns so far as ``role``'s agent is shown them (``prompts.build_messages``): its own reasoning, and its
    own replies exactly as generated where they came from constrained decoding at the first try."""
    return [{"speaker": t.speaker, "action": t.action, "utterance": t.utterance, "price": t.price,
             "reasoning": t.reasoning if t.speaker == role else None,
             "raw": t.raw_output if (t.speaker == role and t.structured and t.retries == 0) else None}
            for t in turns]


class _Live:
    def __init__(self, neg: Negotiation, scenario: Scenario):
        self.neg = neg
        self.scenario = scenario
        self.started = time.perf_counter()

    def state(self, role: str, cfg: RunConfig) -> TurnState:
        turns = self.neg.turns
        other = other_role(role)
        return TurnState(
            negotiation_id=self.neg.negotiation_id,
            role=role,
            view=self.scenario.view_for(role),
            turn=len(turns),
            max_turns=cfg.max_turns,
            opens=(turns[0].speaker == role) if turns else True,
            history=history_for(turns, role),
            other_last_price=last_price_by(turns, other),
            own_last_price=last_price_by(turns, role),
            own_priced_turns=sum(1 for t in turns if t.speaker == role and t.price is not None),
        )


def _speaker(turn_index: int, buyer_opens: bool) -> str:
    return ("buyer" if buyer_opens else "seller") if turn_index % 2 == 0 else ("seller" if buyer_opens else "buyer")


def _make_turn(index: int, speaker: str, parsed, info: dict[str, Any]) -> Turn:
    return Turn(
        index=index,
        speaker=speaker,
        action=parsed.action,
        utterance=parsed.utterance,
        price=parsed.price,
        price_from_words=parsed.price_from_words,
        reasoning=parsed.reasoning,
        raw_output=info["raw"],
        parse_ok=parsed.ok,
        action_known=parsed.action_known,
        error=parsed.error,
        backend_error=info.get("backend_error", False),
        retries=info["retries"],
        structured=info["structured"],
        tokens_in=info["tokens_in"],
        tokens_out=info["tokens_out"],
    )


def _step(agents: dict[str, Agent], live: list[_Live], cfg: RunConfig, turn_index: int) -> list[_Live]:
    """Advance every live negotiation by one turn with a single batched call; return the ones still live."""
    role = _speaker(turn_index, cfg.buyer_opens)
    states = [lv.state(role, cfg) for lv in live]
    results = agents[role].act(states, seed=cfg.seed + 7919 * turn_index)
    still = []
    for lv, (parsed, info) in zip(live, results):
        turn = _make_turn(len(lv.neg.turns), role, parsed, info)
        if turn.backend_error:  # a failure is never an outcome: the negotiation ends as an error, out of metrics
            lv.neg.turns.append(turn)
            lv.neg.outcome, lv.neg.error = "error", f"{role} turn {turn.index}: {turn.error}"
            lv.neg.wall_s = time.perf_counter() - lv.started
            continue
        if not parsed.ok:
            lv.neg.anomalies.append(f"parse_failure@turn{turn.index}")
        if apply_turn(lv.neg, turn, cfg.max_turns):
            lv.neg.wall_s = time.perf_counter() - lv.started
        else:
            still.append(lv)
    return still


def checkpoint_header(buyer: Agent, seller: Agent, cfg: RunConfig, scenarios: Sequence[Scenario]) -> dict:
    """What a checkpoint's negotiations were produced with: both agents' config hashes, the run settings and the
    scenarios' content. A checkpoint whose header differs is never reused."""
    import hashlib

    content = json.dumps([sc.to_dict() for sc in scenarios], sort_keys=True, default=str)
    return {"buyer": buyer.spec.config_hash(), "seller": seller.spec.config_hash(),
            "run": {k: v for k, v in asdict(cfg).items() if k != "mode"},
            "scenarios": hashlib.sha256(content.encode()).hexdigest()[:16]}


def load_checkpoint(path: Path, header: dict | None = None, log: Callable[[str], None] | None = None
                    ) -> dict[str, Negotiation]:
    """Finished negotiations saved by an earlier (interrupted) run with the same ``header``. A checkpoint written
    under other settings (or without a header) is set aside (renamed ``*.stale``), never reused; a torn last line
    from a crash is skipped; ``error`` negotiations are not reused (they are run again)."""
    done: dict[str, Negotiation] = {}
    if not path.is_file():
        return done
    lines = path.read_text(encoding="utf-8").splitlines()
    first = None
    if lines:
        try:
            first = json.loads(lines[0]).get("header")
        except (json.JSONDecodeError, AttributeError):
            first = None
    if header is not None and first != header:
        stale = path.with_name(path.name + ".stale")
        path.replace(stale)
        if log:
            log(f"checkpoint {path} was written with other settings ({first} != {header}); set aside as {stale}, "
                "not reused")
        return done
    for line in lines[1:] if first is not None else lines:
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a crash
        if "header" in d or d.get("outcome") == "error":
            continue
        d["turns"] = [Turn(**t) for t in d["turns"]]
        done[d["negotiation_id"]] = Negotiation(**d)
    return done


def run_negotiations(
    scenarios: Sequence[Scenario],
    buyer: Agent,
    seller: Agent,
    cfg: RunConfig = RunConfig(),
    progress: bool = False,
    checkpoint: str | Path | None = None,
    on_finished: Callable[[Negotiation], None] | None = None,
    log: Callable[[str], None] | None = None,
    stats: dict | None = None,
) -> list[Negotiation]:
    """Run every scenario (times ``cfg.replicates``) between ``buyer`` and ``seller``.

    Batched mode advances all negotiations in lockstep (one generation call per side per turn, finished dialogues
    dropped); naive mode runs one dialogue at a time with one call per turn, as the paper did. With ``checkpoint``,
    each finished negotiation is appended to that JSON-lines file (after a header of the agents' config hashes, the
    run settings and the scenarios' content) and a rerun with the same header skips the ones already there.
    ``stats``, when given, receives ``resumed`` (negotiations taken from the checkpoint) and ``run`` (negotiated).
    """
    agents = {"buyer": buyer, "seller": seller}
    ckpt = Path(checkpoint) if checkpoint else None
    header = checkpoint_header(buyer, seller, cfg, scenarios)
    done = load_checkpoint(ckpt, header, log=log) if ckpt else {}
    if ckpt and not ckpt.is_file():
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        ckpt.write_text(json.dumps({"header": header}) + "\n", encoding="utf-8")
    all_negs: list[Negotiation] = []
    todo: list[_Live] = []
    for rep in range(cfg.replicates):
        for sc in scenarios:
            nid = negotiation_id(buyer.id, seller.id, sc.scenario_id, rep)
            if nid in done:
                all_negs.append(done[nid])
                continue
            neg = Negotiation(nid, sc.to_dict(), buyer.id, seller.id, cfg.seed, rep,
                              buyer_cot=buyer.spec.cot, seller_cot=seller.spec.cot)
            all_negs.append(neg)
            todo.append(_Live(neg, sc))

    if stats is not None:
        stats.update(resumed=len(all_negs) - len(todo), run=len(todo))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"{buyer.id} vs {seller.id}", unit="neg")

    def finish(lv: _Live) -> None:
        nid = lv.neg.negotiation_id
        buyer.backend.release([f"{nid}|buyer"])
        seller.backend.release([f"{nid}|seller"])
        if ckpt and lv.neg.outcome != "error":  # an error is run again on resume, never restored
            with ckpt.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(asdict(lv.neg), default=str) + "\n")
        if on_finished:
            on_finished(lv.neg)
        if bar:
            bar.update(1)

    groups: Iterable[list[_Live]] = [todo] if cfg.mode == "batched" else [[lv] for lv in todo]
    with ExitStack() as joined:
        if cfg.mode == "batched":  # other pairs running beside this one in this process wait for its calls
            join_batchers(joined, buyer, seller)
        for group in groups:
            live = list(group)
            for t in range(cfg.max_turns):
                if not live:
                    break
                if bar:
                    bar.set_postfix(turn=t + 1, live=len(live))
                still = _step(agents, live, cfg, t)
                for lv in live:
                    if lv not in still:
                        finish(lv)
                live = still
    if bar:
        bar.close()
    return all_negs


def join_batchers(stack: ExitStack, *agents: Agent) -> None:
    """Make the calling thread a member of the batchers of the agents' backends (each once) until ``stack`` closes."""
    for b in {id(x): x for x in (a.backend.batcher() for a in agents) if x}.values():
        stack.enter_context(b.member())


def run_pairs(jobs: Sequence[tuple], cfg: RunConfig = RunConfig(), **kwargs: Any) -> list[list[Negotiation]]:
    """Several pairs at once, one thread each: agents on the same base model (adapters included) advance in one
    batch per step across all pairs (see :mod:`agreemate_lib.backends.batching`). ``jobs``: (scenarios, buyer,
    seller) or (scenarios, buyer, seller, {keyword arguments of run_negotiations for this pair}), e.g. its own
    checkpoint. Returns each pair's negotiations, in order; an exception in one pair is raised after every pair
    has finished."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    ready = threading.Barrier(len(jobs)) if jobs else None

    def one(sc, b, s, own=None):
        with ExitStack() as joined:  # every pair is a member before any asks: the first call waits for the others
            join_batchers(joined, b, s)
            ready.wait()
            return run_negotiations(sc, b, s, cfg, **(kwargs | (own or {})))

    with ThreadPoolExecutor(max_workers=max(1, len(jobs)), thread_name_prefix="pair") as pool:
        futures = [pool.submit(one, *job) for job in jobs]
        return [f.result() for f in futures]
