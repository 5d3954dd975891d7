"""The deterministic check of a final answer: every number, date, amount or identifier it states must be in the
tools' results or the user's request. A teacher that writes "your balance is $1,240.50" where the tool returned
1204.5 is caught here, before any judge is paid, and the drop names the value (`invented:<value>`).

What counts as a value: a token with a digit in it (words such as "two" are not read). A plain number or amount
(`$1,240.50`, `3.5%`, `-20`, `1st`) matches a number of the evidence, exactly or as that number rounded to 0-2
decimals (a percentage also as its fraction); a date or time written with separators (`2026-03-01`, `3/1/2026`,
`10:30`) matches when the text of the evidence holds it or every one of its numbers is in the evidence; any other
token (`ACC-1234`, `TX1001`) must be in the evidence's text, case aside. The evidence is the request, the results'
values, the length of each list in them and the number of calls, and the sum of each key's numbers across them (a total over parallel calls).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict

_EDGES = "\"'()[]{}<>.,;:!?*"
_CURRENCY = "$€£¥₹"
_NUMBER = re.compile(r"[+-]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?")
_DATE = re.compile(r"\d{1,4}([/.:-]\d{1,4}){1,2}")
_ORDINAL = re.compile(r"(\d+)(st|nd|rd|th)", re.IGNORECASE)


def _tokens(text: str) -> list[str]:
    """The text's whitespace-separated tokens with a digit, surrounding punctuation stripped."""
    out = []
    for raw in text.split():
        token = raw.strip(_EDGES)
        if any(ch.isdigit() for ch in token):
            out.append(token)
    return out


def _number(token: str) -> tuple[float, bool] | None:
    """A token read as a number (currency signs, thousands commas, an ordinal suffix off), and whether it was a
    percentage; None when it is not one."""
    body = token.lstrip(_CURRENCY).lstrip("+").replace("−", "-")
    body = body[1:] if body[:1] in _CURRENCY else body
    percent = body.endswith("%")
    body = body.rstrip("%")
    ordinal = _ORDINAL.fullmatch(body)
    if ordinal:
        body = ordinal.group(1)
    if not _NUMBER.fullmatch(body):
        return None
    return float(body.replace(",", "")), percent


class Evidence:
    """What an answer may state: the numbers and the text of the request and the results."""

    def __init__(self, query: str, results: list) -> None:
        self.numbers: set[float] = set()
        texts = [query]
        sums: dict[str, list[float]] = defaultdict(list)

        def walk(value, key: str | None = None) -> None:
            if isinstance(value, bool) or value is None:
                texts.append(str(value).lower())
            elif isinstance(value, int | float):
                self.numbers.add(float(value))
                texts.append(str(value))
                if key is not None:
                    sums[key].append(float(value))
            elif isinstance(value, str):
                texts.append(value)
                self._read(value)
            elif isinstance(value, dict):
                for k, v in value.items():
                    texts.append(str(k))
                    walk(v, str(k))
            elif isinstance(value, list):
                self.numbers.add(float(len(value)))
                for v in value:
                    walk(v, key)

        self._read(query)
        self.numbers.add(float(len(results)))  # "both accounts": one result per call
        for result in results:
            walk(result)
        self.numbers.update(sum(v) for v in sums.values() if len(v) > 1)
        self.text = "\n".join(texts).lower()

    def _read(self, text: str) -> None:
        for token in _tokens(text):
            number = _number(token)
            if number is not None:
                self.numbers.add(number[0])
            self.numbers.update(float(n) for n in re.findall(r"\d+(?:\.\d+)?", token))

    def has_number(self, value: float, percent: bool) -> bool:
        wanted = {abs(value), abs(value) / 100} if percent else {abs(value)}
        for n in self.numbers:
            n = abs(n)
            if any(abs(n - w) < 1e-9 or any(abs(round(n, d) - w) < 1e-9 for d in (0, 1, 2)) for w in wanted):
                return True
        return False

    def supports(self, token: str) -> bool:
        number = _number(token)
        if number is not None:
            return self.has_number(*number)
        if token.lower() in self.text:
            return True
        if _DATE.fullmatch(token):
            return all(self.has_number(float(n), False) for n in re.findall(r"\d+", token))
        return False


def invented(answer: str, query: str, results: list) -> list[str]:
    """The values `answer` states that neither `query` nor `results` (the calls' returned values) hold, in order."""
    evidence = Evidence(query or "", results)
    seen: list[str] = []
    for token in _tokens(answer or ""):
        if not evidence.supports(token) and token not in seen:
            seen.append(token)
    return seen


def not_an_answer(answer: str, query: str, tools: list[str]) -> str | None:
    """Why `answer` is no final answer, or None: it repeats the request (`echo`), or it writes out a call of a tool
    instead of saying what the call did (`tool_text:<name>`). The 0.5B teacher wrote both, and its judge kept them."""
    said = _plain(answer)
    if said and said == _plain(query):
        return "echo"
    for name in tools:
        if re.search(rf"`{re.escape(name)}`|\b{re.escape(name)}\s*\(", answer or ""):
            return f"tool_text:{name}"
    return None


def _plain(text: str | None) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", (text or "").lower()).split())


def returned(results_json: str | None) -> list:
    """The values the calls returned, from an execution verdict's `results` (per call: name, ok, result ...)."""
    return [r.get("result") for r in json.loads(results_json or "[]")]
