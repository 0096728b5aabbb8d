"""Structured generation for the transformers backend: the reply is forced into the agent's JSON contract.

The assistant turn is decoded through a small per-sequence state machine:

    {"reasoning": "<free text>",            (chain-of-thought agents only)
     "action": "<one act of the vocabulary>",
     "utterance": "<free text>",
     "price": <number | null>}

(the keys after ``reasoning`` in the order of ``vocabulary.REPLY_KEYS``; ``price`` last, after ``action``).

The act is chosen by the model among the vocabulary's token sequences (constrained decoding), the price is digits
(or ``null`` where the act allows none), the free text is anything but quotes, backslashes, newlines and special
tokens, and the punctuation between fields is forced. The machine's output is always valid JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from agreemate_lib.backends.base import ReplyFormat
from agreemate_lib.core.vocabulary import CHOOSABLE_ACTS, PRICED_ACTS, REPLY_KEYS

#: Acts whose price is forced to null (they name no price).
NULL_PRICE_ACTS = frozenset({"intro", "inquire", "accept", "reject", "quit"})


@dataclass
class TokenTable:
    """Per-tokenizer facts, computed once."""

    strings: list[str]
    eos_id: int
    digit_ids: list[int]
    dot_ids: list[int]
    null_id_seq: list[int]
    close_ids: list[int]  # tokens that are exactly "}"
    free_text_mask: torch.Tensor  # bool[V]: allowed inside a free-text field (no quote/backslash/newline/special)
    quote_tokens: dict[int, str]  # token id -> text after its first quote, for tokens containing a quote
    choice_seqs: dict[str, list[int]] = field(default_factory=dict)
    encode_cache: dict[str, int] = field(default_factory=dict)
    mask_cache: dict[str, torch.Tensor] = field(default_factory=dict)
    tokenizer: object = None
    vocab_size: int = 0
    #: The token the tokenizer's own encoding puts between ``":`` and a number's digits (``": 120`` is ``":``,
    #: `` ``, ``1``, ``2``, ``0`` for SmolLM2), where ``": null`` is ``":`` and `` null``: the price field then starts
    #: right after ``":`` with either, as in the training data. None: a tokenizer without that split (the space
    #: stays in the literal before the price, and ``null`` follows it).
    space_id: int | None = None

    @classmethod
    def build(cls, tokenizer, vocab_size: int) -> TokenTable:
        strings = [tokenizer.decode([i]) for i in range(vocab_size)]
        special = set(tokenizer.all_special_ids)
        free = torch.ones(vocab_size, dtype=torch.bool)
        quote_tokens: dict[int, str] = {}
        for i, s in enumerate(strings):
            if i in special or "\\" in s or "\n" in s or "\r" in s or "\ufffd" in s or not s:
                free[i] = False
            elif '"' in s:
                free[i] = False
                quote_tokens[i] = s[s.index('"') + 1 :]
        for i in range(len(strings), vocab_size):
            free[i] = False
        digit_ids = [i for i, s in enumerate(strings) if s.isdigit() and s.isascii() and i not in special]
        dot_ids = [i for i, s in enumerate(strings) if s == "."]
        close_ids = [i for i, s in enumerate(strings) if s == "}"]
        eos = tokenizer.eos_token_id

        def enc(text: str) -> list[int]:
            return tokenizer.encode(text, add_special_tokens=False)

        colon, space, with_null = enc('":'), enc(" "), enc('": null')
        spaced = (len(space) == 1 and enc('": 120') == colon + space + enc("120")
                  and with_null[: len(colon)] == colon and len(with_null) > len(colon))
        table = cls(
            strings=strings,
            eos_id=eos if isinstance(eos, int) else eos[0],
            digit_ids=digit_ids,
            dot_ids=dot_ids,
            null_id_seq=with_null[len(colon):] if spaced else enc("null"),
            close_ids=close_ids,
            free_text_mask=free,
            quote_tokens=quote_tokens,
            tokenizer=tokenizer,
            vocab_size=vocab_size,
            space_id=space[0] if spaced else None,
        )
        for act in CHOOSABLE_ACTS:
            table.choice_seqs[act] = tokenizer.encode(act, add_special_tokens=False)
        return table

    def text_mask(self, closing: str) -> torch.Tensor:
        """Free text, plus the tokens that close the field with a quote whose rest fits the closing literal."""
        mask = self.mask_cache.get(closing)
        if mask is None:
            mask = self.free_text_mask.clone()
            ok = [tid for tid, rest in self.quote_tokens.items() if closing[1:].startswith(rest)]
            mask[ok] = True
            self.mask_cache[closing] = mask
        return mask

    def first_token(self, text: str) -> int:
        """The first token of the canonical encoding of ``text`` (cached)."""
        tid = self.encode_cache.get(text)
        if tid is None:
            tid = self.tokenizer.encode(text, add_special_tokens=False)[0]
            self.encode_cache[text] = tid
        return tid


def reply_keys(cot: bool) -> tuple[str, ...]:
    """The reply's keys in the order they are written."""
    if REPLY_KEYS[-1] != "price" or REPLY_KEYS.index("action") > REPLY_KEYS.index("price"):
        raise ValueError(f"REPLY_KEYS must end with price, after action: {REPLY_KEYS}")
    return (("reasoning",) if cot else ()) + REPLY_KEYS


def assistant_prefix(cot: bool) -> str:
    """What the assistant turn starts with; the machine continues from here."""
    return '{"' + reply_keys(cot)[0] + '": "'


class TurnMachine:
    """State of one sequence. ``allowed()`` says what may come next; ``advance(token)`` consumes a token."""

    def __init__(self, table: TokenTable, fmt: ReplyFormat):
        self.t = table
        cot, max_utterance_tokens, max_reasoning_tokens = fmt.cot, fmt.max_utterance_tokens, fmt.max_reasoning_tokens
        acts = [a for a in (fmt.allowed_acts or CHOOSABLE_ACTS) if a in table.choice_seqs] or list(CHOOSABLE_ACTS)
        self.choice_seqs = {a: table.choice_seqs[a] for a in acts}
        self.min_digits, self.max_digits = fmt.price_digits if fmt.price_digits != (0, 0) else (1, 8)
        self.fields: dict[str, object] = {}
        self.done = False
        # A list of pending steps; each is (kind, arg).
        steps: list[tuple[str, object]] = []
        text_tokens = {"reasoning": max_reasoning_tokens, "utterance": max_utterance_tokens}
        for k, key in enumerate(reply_keys(cot)):
            if key == "price":
                # the price starts right after '":' with ' null' or ' ' and digits, as the tokenizer encodes it
                # (TokenTable); it is last, so the literal before it closes a string field
                steps += [("literal", '", "price":' if table.space_id is not None else '", "price": '),
                          ("number", None)]
                continue
            if k:  # the prefix (assistant_prefix) opens the first field
                steps.append(("literal", f'", "{key}": "'))
            steps.append(("choice", key) if key == "action" else ("text", (key, text_tokens[key])))
        steps += [("literal", "}"), ("eos", None)]
        self.steps = steps
        self.pos = 0
        self._literal_left: str | None = None
        self._text_buf: list[str] = []
        self._text_tokens = 0
        self._choice_tokens: list[int] = []
        self._num = ""
        self._null_pos = 0
        self._enter()

    @property
    def complete(self) -> bool:
        """The JSON is closed (the last step, end-of-sequence, may not have been fed back by ``generate``)."""
        return self.done or self.kind == "eos"

    # -- step bookkeeping -------------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.steps[self.pos][0]

    def _enter(self) -> None:
        kind, arg = self.steps[self.pos]
        if kind == "literal":
            self._literal_left = arg  # type: ignore[assignment]
        elif kind == "text":
            self._text_buf, self._text_tokens = [], 0
        elif kind == "choice":
            self._choice_tokens = []
        elif kind == "number":
            self._num, self._null_pos = "", 0
            self._spaced = self.t.space_id is None  # the space before the digits is still to come
        if kind == "literal" and not self._literal_left:
            self._next()

    def _next(self) -> None:
        self.pos += 1
        if self.pos >= len(self.steps):
            self.done = True
            return
        self._enter()

    def _consume_literal(self, s: str) -> None:
        """Text that ended a free-text field inside the same token counts against the following literal."""
        while s and self.kind == "literal":
            left = self._literal_left or ""
            n = min(len(s), len(left))
            self._literal_left = left[n:]
            s = s[n:]
            if not self._literal_left:
                self._next()

    # -- what may come next --------------------------------------------------------------------------------------
    def allowed(self) -> list[int] | torch.Tensor | None:
        """A list of allowed ids, a bool mask over the vocabulary, or None when anything goes."""
        if self.done:
            return [self.t.eos_id]
        kind, arg = self.steps[self.pos]
        if kind == "literal":
            return [self.t.first_token(self._literal_left or "")]
        if kind == "eos":
            return [self.t.eos_id]
        if kind == "choice":
            n = len(self._choice_tokens)
            nxt = {
                seq[n]
                for seq in self.choice_seqs.values()
                if len(seq) > n and seq[:n] == self._choice_tokens
            }
            if any(seq == self._choice_tokens for seq in self.choice_seqs.values()):
                nxt.add(self.t.first_token(self.steps[self.pos + 1][1]))  # type: ignore[arg-type]
            return sorted(nxt)
        if kind == "text":
            name, max_tokens = arg  # type: ignore[misc]
            closing = self.steps[self.pos + 1][1]  # the literal that closes this field
            if self._text_tokens >= max_tokens:
                return [self.t.first_token(closing)]  # type: ignore[arg-type]
            if self._text_tokens == 0:
                return self.t.free_text_mask  # at least one token of text
            return self.t.text_mask(closing)  # type: ignore[arg-type]
        if kind == "number":
            action = self.fields.get("action")
            if self._null_pos:
                return [self.t.null_id_seq[self._null_pos]]
            if not self._spaced:  # right after '":': ' null', or the space before the digits
                if action in NULL_PRICE_ACTS:
                    return [self.t.null_id_seq[0]]
                return [self.t.space_id] + ([self.t.null_id_seq[0]] if action not in PRICED_ACTS else [])
            if not self._num:
                if action in NULL_PRICE_ACTS:
                    return [self.t.null_id_seq[0]]
                ids = [i for i in self.t.digit_ids if self.t.strings[i] != "0" or self.min_digits <= 1]
                if action not in PRICED_ACTS and self.t.space_id is None:
                    ids.append(self.t.null_id_seq[0])
                return ids
            whole = self._num.split(".")[0]
            singles = [i for i in self.t.digit_ids if len(self.t.strings[i]) == 1]
            if self._num.endswith("."):
                return singles
            if "." in self._num:  # cents: up to two digits, then close
                return list(self.t.close_ids) + (singles if len(self._num.split(".")[1]) < 2 else [])
            ids: list[int] = []
            if len(whole) >= self.min_digits and not (whole == "0" and self.min_digits > 1):
                ids += list(self.t.close_ids) + list(self.t.dot_ids)
            if len(whole) < self.max_digits and whole != "0":
                ids += [i for i in self.t.digit_ids if len(whole) + len(self.t.strings[i]) <= self.max_digits]
            return ids or list(self.t.close_ids)
        return None

    # -- consume ----------------------------------------------------------------------------------------------------
    def advance(self, token_id: int) -> None:
        if self.done:
            return
        s = self.t.strings[token_id]
        kind, arg = self.steps[self.pos]
        if kind == "literal":
            self._consume_literal(s)
        elif kind == "eos":
            self._next()
        elif kind == "choice":
            if '"' in s:  # the act is complete; this token opens the following literal
                self.fields["action"] = self._choice_name()
                self._next()
                self._consume_literal(s)
            else:
                self._choice_tokens.append(token_id)
        elif kind == "text":
            name = arg[0]  # type: ignore[index]
            if '"' in s:
                before, _, after = s.partition('"')
                self._text_buf.append(before)
                self.fields[name] = "".join(self._text_buf).strip()
                self._next()
                self._consume_literal('"' + after)
            else:
                self._text_buf.append(s)
                self._text_tokens += 1
        elif kind == "number":
            if self._null_pos or (not self._num and token_id == self.t.null_id_seq[0]):
                self._null_pos += 1
                if self._null_pos >= len(self.t.null_id_seq):
                    self.fields["price"] = None
                    self._next()
            elif not self._spaced:
                self._spaced = True
            elif s == "}":
                self.fields["price"] = float(self._num.rstrip("."))
                self._next()
                self._consume_literal(s)
            else:
                self._num += s

    def _choice_name(self) -> str:
        for act, seq in self.choice_seqs.items():
            if seq == self._choice_tokens:
                return act
        return "unknown"


class TurnMachineProcessor:
    """A transformers ``LogitsProcessor`` driving one :class:`TurnMachine` per row of the batch.

    The rows' allowed sets become one boolean mask over the batch in a fixed number of tensor operations per step,
    whatever the batch size: each vocabulary mask a machine hands out (a few per tokenizer, cached) is one row of a
    stack kept on the scores' device and picked per row by index; the rows that allow a short list of ids get them
    scattered in; one ``masked_fill`` applies it. (Row by row, a step cost a few kernel launches per row: at 240
    rows on a GPU, more than the model's forward.)"""

    def __init__(self, machines: list[TurnMachine]):
        self.machines = machines
        self._started = False
        self._advanced = False  # forced_after has fed the machines the last step's tokens
        self.elapsed = 0.0  # seconds spent here (the Python side of structured generation)
        #: Distinct vocabulary masks seen (by identity) -> their row in the device stack; rows 0 and 1 are "none
        #: allowed" (for id-list rows) and "all allowed" (for rows where anything goes).
        self._rows: dict[int, int] = {}
        self._masks: list[torch.Tensor] = []
        self._stack: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        import time

        t0 = time.perf_counter()
        try:
            return self._apply(input_ids, scores)
        finally:
            self.elapsed += time.perf_counter() - t0

    def select(self, keep: list[int]) -> None:
        """Keep the machines of rows ``keep`` (ended rows dropped from the batch)."""
        self.machines = [self.machines[i] for i in keep]

    def forced_after(self, chosen: list[int], writing: list[bool], room: list[int]) -> list[list[int]]:
        """Each writing row's machine takes its chosen token, then up to ``room`` tokens it forces after it (one
        allowed id: the punctuation between fields, ``null``, the end of the reply; the end-of-sequence token ends
        the run); returns those forced tokens per row. The machines have then consumed them: the next call does
        not advance them from the sequences again."""
        import time

        t0 = time.perf_counter()
        out: list[list[int]] = []
        for m, tok, w, k in zip(self.machines, chosen, writing, room):
            run: list[int] = []
            if w and not m.done:
                m.advance(tok)
                while tok != m.t.eos_id and len(run) < k:
                    allowed = m.allowed()
                    if not isinstance(allowed, list) or len(allowed) != 1:
                        break
                    tok = allowed[0]
                    run.append(tok)
                    m.advance(tok)
            out.append(run)
        self._advanced = True
        self.elapsed += time.perf_counter() - t0
        return out

    def _stack_on(self, device, vocab: int) -> torch.Tensor:
        """[2 + masks, vocab] bool on ``device``: none, all, then each distinct mask (rebuilt when one is added)."""
        if self._stack is None or self._stack.shape[0] != 2 + len(self._masks):
            rows = [torch.zeros(vocab, dtype=torch.bool), torch.ones(vocab, dtype=torch.bool)]
            rows += [m[:vocab] for m in self._masks]
            self._stack = torch.stack(rows).to(device)
        return self._stack

    def _apply(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._started and not self._advanced:
            last = input_ids[:, -1].tolist()
            for m, tok in zip(self.machines, last):
                m.advance(tok)
        self._started, self._advanced = True, False
        pick: list[int] = []
        list_rows: list[int] = []
        list_ids: list[int] = []
        for row, m in enumerate(self.machines):
            allowed = m.allowed()
            if allowed is None:
                pick.append(1)
            elif isinstance(allowed, torch.Tensor):
                k = self._rows.get(id(allowed))
                if k is None:
                    self._masks.append(allowed)
                    k = self._rows[id(allowed)] = 1 + len(self._masks)
                pick.append(k)
            else:
                pick.append(0)
                list_rows += [row] * len(allowed)
                list_ids += allowed
        stack = self._stack_on(scores.device, scores.shape[1])
        idx = torch.tensor(pick + list_rows + list_ids, dtype=torch.long).to(scores.device, non_blocking=True)
        allow = stack.index_select(0, idx[: len(pick)])
        if list_ids:
            n = len(list_rows)
            allow[idx[len(pick) : len(pick) + n], idx[len(pick) + n :]] = True
        return scores.masked_fill_(~allow, torch.finfo(scores.dtype).min)


def max_reply_tokens(cot: bool, max_utterance_tokens: int, max_reasoning_tokens: int) -> int:
    """An upper bound on the tokens the machine can emit (punctuation, act, price, free text, eos)."""
    return 40 + max_utterance_tokens + (max_reasoning_tokens + 10 if cot else 0)
