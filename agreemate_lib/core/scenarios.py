"""Negotiation scenarios from Craigslist Bargains: loading, validation and seeded sampling."""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agreemate_lib.core import settings

SPLITS = ("train", "validation", "test")
DEFAULT_RESERVATION_FRACTION = 0.7  # He et al. 2018: the seller's bottom line is 70% of the listing price


class ScenarioError(ValueError):
    """A listing that cannot be a scenario; the message names the row and the field."""


@dataclass(frozen=True)
class Scenario:
    """One listing to negotiate over. Each agent sees only its own target (see :meth:`view_for`)."""

    scenario_id: str
    split: str
    row: int
    title: str
    description: str
    category: str
    listing_price: float
    buyer_target: float
    seller_target: float
    seller_reservation: float

    def view_for(self, role: str) -> dict[str, Any]:
        """What one side knows: the listing, and its own target (and, for the seller, its bottom line)."""
        base = {
            "title": self.title,
            "description": self.description,
            "category": self.category,
            "listing_price": self.listing_price,
        }
        if role == "buyer":
            return base | {"target": self.buyer_target}
        if role == "seller":
            return base | {"target": self.seller_target, "bottom_line": self.seller_reservation}
        raise ValueError(f"role must be 'buyer' or 'seller', got {role!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DroppedRow:
    split: str
    row: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.split} row {self.row}: field {self.field!r}: {self.reason}"


@dataclass
class ScenarioSet:
    scenarios: list[Scenario]
    dropped: list[DroppedRow] = field(default_factory=list)
    source: str = ""


def scenario_id(split: str, row: int) -> str:
    """Stable id derived from split and row index."""
    return f"{split}-{row:05d}"


def _as_price(value: Any, split: str, row: int, name: str) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ScenarioError(f"{split} row {row}: field {name!r} is missing")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ScenarioError(f"{split} row {row}: field {name!r} is not a number: {value!r}") from None
    if not math.isfinite(x) or x <= 0:
        raise ScenarioError(f"{split} row {row}: field {name!r} must be a positive finite price, got {x!r}")
    return x


def make_scenario(
    split: str,
    row: int,
    *,
    title: Any,
    description: Any,
    category: Any,
    listing_price: Any,
    buyer_target: Any,
    seller_target: Any,
    reservation_fraction: float = DEFAULT_RESERVATION_FRACTION,
) -> Scenario:
    """Validate one listing and build its scenario; raises :class:`ScenarioError` naming row and field."""
    lp = _as_price(listing_price, split, row, "listing_price")
    bt = _as_price(buyer_target, split, row, "buyer_target")
    st = _as_price(seller_target, split, row, "seller_target")
    if bt >= st:
        raise ScenarioError(
            f"{split} row {row}: field 'buyer_target' ({bt:g}) must be below 'seller_target' ({st:g})"
        )
    if not title or not str(title).strip():
        raise ScenarioError(f"{split} row {row}: field 'title' is missing")
    if not 0 < reservation_fraction <= 1:
        raise ValueError(f"reservation_fraction must be in (0, 1], got {reservation_fraction}")
    return Scenario(
        scenario_id=scenario_id(split, row),
        split=split,
        row=row,
        title=str(title).strip(),
        description=str(description or "").strip(),
        category=str(category or "").strip() or "unknown",
        listing_price=lp,
        buyer_target=bt,
        seller_target=st,
        seller_reservation=round(reservation_fraction * lp, 2),
    )


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (list, tuple)) and value else value


def _from_hf_row(split: str, row: int, rec: dict[str, Any], fraction: float) -> Scenario:
    items = rec.get("items") or {}
    info = rec.get("agent_info") or {}
    roles = list(info.get("Role") or [])
    targets = list(info.get("Target") or [])
    if "buyer" not in roles or "seller" not in roles or len(targets) != len(roles):
        raise ScenarioError(f"{split} row {row}: field 'agent_info' lacks a buyer and a seller target")
    by_role = dict(zip(roles, targets))
    # items hold one copy per agent (index 0: the buyer's, 1: the seller's); the seller's description is the full one.
    descriptions = items.get("Description") or [""]
    return make_scenario(
        split,
        row,
        title=_first(items.get("Title")),
        description=descriptions[-1],
        category=_first(items.get("Category")),
        listing_price=_first(items.get("Price")),
        buyer_target=by_role["buyer"],
        seller_target=by_role["seller"],
        reservation_fraction=fraction,
    )


def iter_raw_rows(split: str, source: str | None = None) -> Iterable[dict[str, Any]]:
    """The raw Craigslist Bargains records of a split, from a local folder or the HF hub (with ``datasets``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    source = source or settings.craigslist_source()
    path = Path(source)
    if path.is_dir():
        if split == "train":
            csv_path = path / "train_scenarios.csv"
            if not csv_path.is_file():
                raise FileNotFoundError(f"no train listings at {csv_path}")
            with csv_path.open(newline="", encoding="utf-8") as fh:
                yield from csv.DictReader(fh)
            return
        json_path = path / f"{split}.json"
        if not json_path.is_file():
            raise FileNotFoundError(f"Craigslist Bargains split {split!r} not found: {json_path} does not exist")
        import datasets

        ds = datasets.load_dataset("json", data_files={split: str(json_path)}, split=split)
        yield from ds
        return
    if source.startswith((".", "/", "~")):
        raise FileNotFoundError(f"Craigslist Bargains folder not found: {source}")
    import datasets

    yield from datasets.load_dataset(source, split=split)


def load_scenarios(
    split: str = "test",
    source: str | None = None,
    reservation_fraction: float = DEFAULT_RESERVATION_FRACTION,
) -> ScenarioSet:
    """Every valid scenario of a split; invalid rows are dropped and listed in ``.dropped``."""
    out: list[Scenario] = []
    dropped: list[DroppedRow] = []
    for row, rec in enumerate(iter_raw_rows(split, source)):
        try:
            if "agent_info" in rec:
                sc = _from_hf_row(split, row, rec, reservation_fraction)
            else:  # train_scenarios.csv layout
                sc = make_scenario(
                    split,
                    row,
                    title=rec.get("title"),
                    description=rec.get("description"),
                    category=rec.get("category"),
                    listing_price=rec.get("list_price"),
                    buyer_target=rec.get("buyer_target"),
                    seller_target=rec.get("seller_target"),
                    reservation_fraction=reservation_fraction,
                )
        except ScenarioError as exc:
            msg = str(exc)
            fld = msg.split("field '")[1].split("'")[0] if "field '" in msg else "?"
            dropped.append(DroppedRow(split, row, fld, msg))
            continue
        out.append(sc)
    return ScenarioSet(out, dropped, source or settings.craigslist_source())


def sample_scenarios(
    split: str = "test",
    n: int = 30,
    seed: int = 0,
    source: str | None = None,
    reservation_fraction: float = DEFAULT_RESERVATION_FRACTION,
) -> ScenarioSet:
    """A seeded sample of ``n`` valid scenarios: the same arguments always give the same scenarios, in the same
    order."""
    full = load_scenarios(split, source, reservation_fraction)
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if n > len(full.scenarios):
        raise ValueError(f"asked for {n} scenarios but split {split!r} has only {len(full.scenarios)} valid ones")
    rng = random.Random(seed)
    picked = rng.sample(range(len(full.scenarios)), n)
    return ScenarioSet([full.scenarios[i] for i in picked], full.dropped, full.source)


def study_scenarios(split: str = "paper", n: int = 30, seed: int = 0, source: str | None = None,
                    reservation_fraction: float = DEFAULT_RESERVATION_FRACTION) -> ScenarioSet:
    """The scenarios of a study. ``paper``: the paper's evaluation listings with the published prices and targets
    (the first ``n`` of 30), so rows pair with the published runs per scenario; ``heldout``: a seeded sample of train
    listings none of whose items appear in a dialogue we train on; a split name: a seeded sample of that split."""
    if split == "paper":
        from agreemate_lib.evaluation.paper import paper_scenarios

        allp = paper_scenarios(reservation_fraction=reservation_fraction)
        if not 0 < n <= len(allp):
            raise ValueError(f"the paper's scenario set has {len(allp)} listings; asked for {n}")
        return ScenarioSet(allp[:n], [], "agreemate_published_runs")
    if split == "heldout":
        from agreemate_lib.training.splits import heldout_train_scenarios, listing_key

        trained = {listing_key(_first((rec.get("items") or {}).get("Title")))
                   for sp in ("validation", "test") for rec in iter_raw_rows(sp, source)}
        picked = heldout_train_scenarios(n, seed, source, exclude_listings=trained)
        return ScenarioSet(picked, [], source or settings.craigslist_source())
    return sample_scenarios(split, n, seed, source, reservation_fraction)
