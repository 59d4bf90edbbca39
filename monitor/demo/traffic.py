"""Realistic demo traffic for two apps, and the incidents `lookout demo` injects on a timeline.

Prompts and responses are generated from shipped phrase lists (no data set needed); latency is
log-normal with a time-to-first-token share, tokens follow the texts, a few calls fail.
support-bot's password-reset questions carry a reference answer, and a share of its requests
is answered again by a shadow model (`metadata.shadow_of`) for the judge's pairwise grading.
Users give thumbs on a tenth of the answers. An incident changes one app's traffic for a while:
slow calls, an error burst, prompts on another topic (drift), prompts unlike anything the app
sees (out-of-distribution), a tool failing, retrievals coming back empty, users' thumbs turning
down, or the shadow model answering worse than production. Incidents on different families
may overlap, on one app or two.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

SUPPORT, TRAVEL = "support-bot", "travel-assistant"


class IncidentKind(StrEnum):
    LATENCY = "latency"
    ERRORS = "errors"
    DRIFT = "drift"
    OOD = "ood"
    TOOL_FAILURE = "tool-failure"
    EMPTY_RETRIEVAL = "empty-retrieval"
    SHADOW_REGRESSION = "shadow-regression"
    THUMBS_DOWN = "thumbs-down"


@dataclass(frozen=True, slots=True)
class Incident:
    kind: IncidentKind
    app: str
    start_s: float  # after the demo starts, at speed 1
    duration_s: float
    rule: str  # the demo rule it should fire
    what: str
    over: str = ""  # what is said when it ends (another incident may go on on the same app)


TIMELINE: tuple[Incident, ...] = (
    Incident(
        IncidentKind.LATENCY,
        SUPPORT,
        45,
        45,
        "slow-responses",
        "the provider slows down: support-bot's calls take 5x longer",
        "support-bot's calls are fast again",
    ),
    Incident(
        IncidentKind.TOOL_FAILURE,
        TRAVEL,
        55,
        40,
        "tool-failing",
        "travel-assistant's flight_search tool fails on 60% of its calls",
        "flight_search works again",
    ),
    Incident(
        IncidentKind.ERRORS,
        TRAVEL,
        110,
        40,
        "error-burst",
        "an upstream outage: 40% of travel-assistant's calls fail",
        "travel-assistant's calls succeed again",
    ),
    Incident(
        IncidentKind.EMPTY_RETRIEVAL,
        SUPPORT,
        110,
        40,
        "empty-retrievals",
        "support-bot's help-centre search returns nothing for 85% of questions",
        "the help-centre search finds documents again",
    ),
    Incident(
        IncidentKind.SHADOW_REGRESSION,
        SUPPORT,
        160,
        60,
        "shadow-losing",
        "a new build of the shadow model dodges support-bot's questions",
        "the shadow model answers properly again",
    ),
    Incident(
        IncidentKind.DRIFT,
        SUPPORT,
        170,
        55,
        "prompt-drift",
        "users start asking support-bot about cooking",
        "support-bot's users ask about their accounts again",
    ),
    Incident(
        IncidentKind.THUMBS_DOWN,
        SUPPORT,
        230,
        35,
        "thumbs-down",
        "a new answer template annoys support-bot's users: 80% thumbs down",
        "support-bot's users like its answers again",
    ),
    Incident(
        IncidentKind.OOD,
        TRAVEL,
        240,
        30,
        "odd-prompts",
        "travel-assistant receives code, gibberish and other languages",
        "travel-assistant's prompts are about travel again",
    ),
)
TIMELINE_S = 300.0

_ACCOUNT_THINGS = [
    "password",
    "card",
    "account",
    "PIN",
    "statement",
    "overdraft",
    "address",
    "direct debit",
    "savings account",
    "credit limit",
    "mobile app login",
    "standing order",
]
_SUPPORT_ASKS = [
    "How do I reset my {x}?",
    "Why was my {x} blocked?",
    "Can I change my {x} online?",
    "I was charged twice on my {x}, what happened?",
    "How long does it take to update my {x}?",
    "Where do I find my {x} in the app?",
    "Is there a fee to replace my {x}?",
    "My {x} stopped working after the update, can you help?",
    "Can you explain the charges on my {x} this month?",
    "How do I close my {x}?",
]
_SUPPORT_ANSWERS = [
    "You can do that in Settings > Security. It takes about two minutes.",
    "I checked your {x}: a temporary hold was placed and it clears within 24 hours.",
    "Sorry about that. I have opened a ticket and refunded the duplicate charge on your {x}.",
    "Yes, open the app, tap Profile, then {x}, and follow the steps.",
]
_CITIES = [
    "Lisbon",
    "Kyoto",
    "Montreal",
    "Cape Town",
    "Reykjavik",
    "Buenos Aires",
    "Oslo",
    "Marrakesh",
    "Hanoi",
    "Vienna",
    "Seattle",
    "Istanbul",
]
_TRAVEL_ASKS = [
    "Find me a hotel in {x} for next weekend under 150 euros a night.",
    "What is the cheapest flight to {x} in March?",
    "Plan a three-day itinerary for {x}.",
    "Do I need a visa to visit {x}?",
    "What's the best time of year to go to {x}?",
    "Can I get from the airport to central {x} by train?",
    "Suggest family-friendly activities in {x}.",
    "Change my booking in {x} to a later date.",
]
_TRAVEL_ANSWERS = [
    "Here are three options in {x}, all with free cancellation.",
    "The best fares to {x} are mid-week; I found one for 212 euros return.",
    "Day 1 in {x}: the old town; day 2: museums; day 3: a food tour.",
]
_COOKING = [
    "What can I cook with {x} and rice?",
    "How long should I roast {x}?",
    "Give me a vegetarian recipe with {x}.",
    "How do I keep {x} from sticking to the pan?",
    "Can I freeze leftover {x}?",
    "What wine goes with {x}?",
]
_INGREDIENTS = [
    "chickpeas",
    "salmon",
    "aubergine",
    "tofu",
    "lamb shoulder",
    "mushrooms",
    "sweet potatoes",
    "lentils",
    "pork belly",
    "spinach",
]
_ODD = [
    "SELECT * FROM users WHERE id = {n}; DROP TABLE sessions; --",
    "def f(x): return [i ** {n} for i in range(x) if i % 3]",
    "asdkj qwpoe zmxn {n} lkjh vbnm qwer tyui",
    "Wie spät ist es in der Zentrale, Abteilung {n}?",
    "¿Cuántos gatos caben en una caja de {n} litros?",
    "0x{n:04x} 0xdeadbeef 0xcafebabe segfault at 0x0000",
    "translate to klingon: the {n} tribbles are in the engine room",
    "<script>alert({n})</script>",
]


# support-bot's canary: a share of its requests is answered again by this model, in shadow.
SHADOW_MODEL = "gpt-4.1-mini"
SHADOW_SHARE = 0.2
_RESET = "How do I reset my "


def _reference(prompt: str) -> str | None:
    """The help centre's answer to the one question it covers (a reference answer)."""
    if prompt.startswith(_RESET):
        return f"Open Settings > Security, choose your {prompt[len(_RESET) : -1]} and tap Reset."
    return None


@dataclass
class AppProfile:
    app: str
    model: str
    latency_ms: float  # median
    error_rate: float


PROFILES = {
    SUPPORT: AppProfile(SUPPORT, "gpt-4o-mini", 900.0, 0.01),
    TRAVEL: AppProfile(TRAVEL, "gpt-4o", 1400.0, 0.01),
}


Kinds = IncidentKind | Collection[IncidentKind] | None


def kinds_of(incidents: Kinds) -> frozenset[IncidentKind]:
    if incidents is None:
        return frozenset()
    return frozenset((incidents,) if isinstance(incidents, IncidentKind) else incidents)


class Traffic:
    """Records for one app at a time; `incidents` are what is going on for that app now."""

    def __init__(self, seed: int = 7) -> None:
        self._rng = random.Random(seed)
        self._shadow_rng = random.Random(seed + 1)  # the main stream stays as it was
        self._sent = 0
        self._run = uuid.uuid4().hex[:8]  # ids unique across demo runs on one store

    def _texts(self, app: str, kinds: frozenset[IncidentKind]) -> tuple[str, str]:
        r = self._rng
        if IncidentKind.OOD in kinds and r.random() < 0.7:
            return r.choice(_ODD).format(n=r.randrange(1, 9999)), "I'm not sure I understand."
        if IncidentKind.DRIFT in kinds and r.random() < 0.8:
            food = r.choice(_INGREDIENTS)
            return r.choice(_COOKING).format(x=food), f"Try {food} with garlic and lemon."
        if app == SUPPORT:
            x = r.choice(_ACCOUNT_THINGS)
            return r.choice(_SUPPORT_ASKS).format(x=x), r.choice(_SUPPORT_ANSWERS).format(x=x)
        city = r.choice(_CITIES)
        return r.choice(_TRAVEL_ASKS).format(x=city), r.choice(_TRAVEL_ANSWERS).format(x=city)

    def record(self, app: str, ts: float, incidents: Kinds) -> dict[str, Any]:
        r, profile, kinds = self._rng, PROFILES[app], kinds_of(incidents)
        prompt, response = self._texts(app, kinds)
        latency = profile.latency_ms * math.exp(r.gauss(0.0, 0.35))
        if IncidentKind.LATENCY in kinds:
            latency *= 5.0
        error_rate = 0.4 if IncidentKind.ERRORS in kinds else profile.error_rate
        out_tokens = int(len(response) / 3.5 * r.uniform(3.0, 8.0))
        record: dict[str, Any] = {
            "ts": ts,
            "app": app,
            "model": profile.model,
            "provider": "openai",
            "prompt": prompt,
            "latency_ms": round(latency, 1),
            "ttft_ms": round(latency * r.uniform(0.15, 0.3), 1),
            "input_tokens": len(prompt) // 4 + 150,  # plus a system prompt
        }
        self._sent += 1
        user = r.randrange(1, 500)
        record.update(
            id=f"{app}-{self._run}-{self._sent}", user_id=f"u{user}", session_id=f"s{user}"
        )
        record.update(self._steps(app, latency, kinds))
        if r.random() < error_rate:
            record.update(
                status="error",
                error=r.choice(["upstream 503", "rate limited (429)", "timeout after 30s"]),
            )
        else:
            record.update(response=response, output_tokens=out_tokens)
        if (reference := _reference(prompt)) is not None:
            record["metadata"] = {"reference": reference}
        return record

    def _steps(self, app: str, latency_ms: float, kinds: frozenset[IncidentKind]) -> dict[str, Any]:
        """support-bot retrieves from its help centre; travel-assistant calls a flight search."""
        r = self._rng
        if app == SUPPORT:
            documents = r.choice((0, 2, 3, 4, 5))
            if IncidentKind.EMPTY_RETRIEVAL in kinds and r.random() < 0.85:
                documents = 0
            return {
                "retrieval": {"latency_ms": round(latency_ms * 0.05, 1), "documents": documents}
            }
        failing = 0.6 if IncidentKind.TOOL_FAILURE in kinds else 0.03
        status = "error" if r.random() < failing else "ok"
        call = {"name": "flight_search", "latency_ms": round(latency_ms * 0.3, 1), "status": status}
        return {"tools": [call]}

    def feedback(self, record: dict[str, Any], incidents: Kinds = None) -> dict[str, Any] | None:
        """A user's thumbs on a tenth of the answers (a failed call has none to rate): mostly
        up, down on 15% (80% while a new answer template annoys them)."""
        r = self._rng
        shadow = "shadow_of" in record.get("metadata", {})
        if r.random() >= 0.1 or "response" not in record or shadow:
            return None  # users never see a shadow model's answers
        dislike = 0.8 if IncidentKind.THUMBS_DOWN in kinds_of(incidents) else 0.15
        bad = r.random() < dislike
        return {
            "record_id": record["id"],
            "app": record["app"],
            "key": "thumbs",
            "score": 0 if bad else 1,
            "user_id": record["user_id"],
        }

    def shadow(self, record: dict[str, Any], incidents: Kinds = None) -> dict[str, Any] | None:
        """For a share of support-bot's answered records, the shadow model's answer to the
        same request (a little more complete; a dodge during a shadow regression), naming the
        record's id. Not a user's request: no user or session (engagement counts the
        production one)."""
        r = self._shadow_rng
        if record["app"] != SUPPORT or "response" not in record or r.random() >= SHADOW_SHARE:
            return None
        production = {k: v for k, v in record.items() if k not in ("user_id", "session_id")}
        response = record["response"] + " I have also emailed you the steps."
        if IncidentKind.SHADOW_REGRESSION in kinds_of(incidents):
            response = "Sorry, I cannot help with that here."
        return {
            **production,
            "id": f"{record['id']}-shadow",
            "model": SHADOW_MODEL,
            "response": response,
            "latency_ms": round(record["latency_ms"] * r.uniform(1.0, 1.4), 1),
            "metadata": {**record.get("metadata", {}), "shadow_of": record["id"]},
        }


def active(timeline: tuple[Incident, ...], app: str, elapsed_s: float) -> tuple[Incident, ...]:
    """The incidents under way for `app` at `elapsed_s` (timeline time, speed 1)."""
    return tuple(
        i for i in timeline if i.app == app and i.start_s <= elapsed_s < i.start_s + i.duration_s
    )
