"""parse_turn on hand-written ugly replies, and price extraction."""

import pytest

from agreemate_lib.negotiation.parsing import PriceError, extract_prices, parse_price, parse_turn, price_from_utterance

# (raw reply, expected action, expected price, expected ok)
UGLY = [
    ('{"action": "offer", "utterance": "Would you take $150?", "price": 150}', "offer", 150.0, True),
    ('```json\n{"action": "offer", "utterance": "How about 150?", "price": 150}\n```', "offer", 150.0, True),
    ("```\n{'action': 'counter-price', 'utterance': 'I can do 180', 'price': 180}\n```", "counter-price", 180.0, True),
    ("{'action': 'inquire', 'utterance': 'Is it still available?', 'price': None}", "inquire", None, True),
    ('{"action": "offer", "utterance": "ok", "price": "$1,200"} Let me know!', "offer", 1200.0, True),
    ('Sure! Here is my reply: {"action": "offer", "utterance": "1.2k?", "price": "1.2k"}', "offer", 1200.0, True),
    ('{"action": "offer", "utterance": "Say $45.99", "price": "45.99"}', "offer", 45.99, True),
    ('{"action": "offer", "utterance": "I can pay 300 dollars", "price": null}', "offer", 300.0, True),
    ('{"action": "offer", "utterance": "How about $8,900 for the 2006 Toyota?", "price": null}', "offer", 8900.0, True),
    ('{"action": "offer", "utterance": "I offer 250", "price": null}', "offer", 250.0, True),
    ('**Action:** offer\n**Utterance:** Would you take $40?\n**Price:** $40', "offer", 40.0, True),
    ("Action: counter-price\nUtterance: Meet me at 75.\nPrice: 75", "counter-price", 75.0, True),
    ("- action: accept\n- utterance: Deal!\n- price: null", "accept", None, True),
    ('{"action": "Counter Offer", "utterance": "I could do $90", "price": 90}', "counter-price", 90.0, True),
    ('{"action": "COUNTER_PRICE", "utterance": "95 then", "price": 95}', "counter-price", 95.0, True),
    ('{"action": "accept", "utterance": "", "price": null}', "accept", None, True),
    ('{"act": "inform", "message": "It works perfectly.", "price": null}', "inform", None, True),
    ('{"intent": "intro", "text": "Hello there!"}', "intro", None, True),
    ('{"action": "offer", "utterance": "How about 120", "price": 120,}', "offer", 120.0, True),
    ('{"reasoning": "Open low.", "action": "offer", "utterance": "$60?", "price": 60}', "offer", 60.0, True),
    ('{"action": "offer", "utterance": "I\'ll give you $75 for it", "price": "75.00 USD"}', "offer", 75.0, True),
    # cut off mid-utterance: not an offer of $2, a parse failure with no price
    ('{"action": "offer", "utterance": "Would you take 2', "offer", None, False),
    ('{"action": "haggle", "utterance": "lower please", "price": null}', "unknown", None, False),
    # an invented act with a price: unusable, so its price can never be accepted
    ('{"action": "haggle", "utterance": "$30?", "price": 30}', "unknown", None, False),
    ('{"action": "offer", "utterance": "hmm", "price": -50}', "offer", None, False),
    ('{"action": "offer", "utterance": "no number here", "price": null}', "offer", None, False),
    ("", "unknown", None, False),
    ("I'm not a mechanic, but I think the bike is great.", "unknown", None, False),
    ("{not json at all", "unknown", None, False),
    ('{"utterance": "missing action", "price": 10}', "unknown", None, False),
    ('{"action": "insist", "utterance": "", "price": 99}', "insist", 99.0, False),  # empty utterance
    ('```json\n{"action": "reject", "utterance": "No deal.", "price": null}\n```\nThanks', "reject", None, True),
    ('{"action": "quit", "utterance": "Bye", "price": "none"}', "quit", None, True),
    ('{"action": "offer", "utterance": "I can do $1,250.50", "price": "$1,250.50"}', "offer", 1250.5, True),
    ('{"action":"counter-price","utterance":"3k is my limit","price":null}', "counter-price", 3000.0, True),
]


@pytest.mark.parametrize("raw,action,price,ok", UGLY)
def test_parse_turn_ugly_replies(raw, action, price, ok):
    t = parse_turn(raw)
    assert t.action == action, t
    assert t.price == price, t
    assert t.ok == ok, t
    if not ok:
        assert t.error


def test_the_turn_says_whether_its_price_was_read_from_the_words():
    assert parse_turn('{"action":"counter-price","utterance":"3k is my limit","price":null}').price_from_words
    assert not parse_turn('{"action": "offer", "utterance": "I can do $1,250", "price": 1250}').price_from_words
    assert not parse_turn('{"action": "inform", "utterance": "It is $90 new", "price": null}').price_from_words


def test_at_least_thirty_cases():
    assert len(UGLY) >= 30


def test_unknown_action_is_flagged():
    t = parse_turn('{"action": "haggle", "utterance": "x", "price": null}')
    assert t.action == "unknown" and not t.action_known and "haggle" in t.error


def test_reasoning_kept():
    t = parse_turn('{"reasoning": "They seem eager.", "action": "insist", "utterance": "$90 firm", "price": 90}')
    assert t.reasoning == "They seem eager." and t.price == 90.0


@pytest.mark.parametrize(
    "value,expected",
    [(12, 12.0), ("$1,200", 1200.0), ("1.5k", 1500.0), ("$45.99", 45.99), ("300 dollars", 300.0), (None, None),
     ("null", None), (-1, None), ("", None), ("USD 20", 20.0)],
)
def test_parse_price(value, expected):
    assert parse_price(value) == expected


@pytest.mark.parametrize("value", [-5, "-$20", float("inf")])
def test_parse_price_rejects_bad(value):
    with pytest.raises(PriceError):
        parse_price(value)


def test_extract_prices_skips_quantities():
    text = "My 2006 Toyota has 120,000 miles and 4 owners; I'd take $8,900 or maybe 8500."
    assert extract_prices(text) == [8900.0, 8500.0]
    assert price_from_utterance(text) == 8900.0  # a $-marked amount wins
    assert price_from_utterance("iPhone 7 for 150?") == 150.0
