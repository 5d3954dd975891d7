"""Checks that need no judge, on plain text: rules copied into an answer, specific figures no input gave, an answer
cut short, and call arguments no query stated. Pure Python, row by row: the stages (rule_checks, call_arguments) run
them on the executors. They work with any teacher, a 0.5B one whose judge keeps almost everything included.

The patterns are English; `extra_patterns` and `dangling_words` in the config add a domain's or a language's own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

from dateutil import parser as dateparser

WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?")
_MONTHS = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|"
    r"oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
# Each kind of specific figure: a pattern, found case-insensitively.
FIGURES = {
    "amount": r"(?:[£$€¥₹]\s?\d[\d,]*(?:\.\d+)?(?:\s?(?:k|m|bn|million|thousand|billion)\b)?"
    r"|\b\d[\d,]*(?:\.\d+)?\s?(?:usd|eur|gbp|dollars?|pounds?|euros?|pence|cents?)\b)",
    "data": r"\b\d+(?:\.\d+)?\s?(?:gb|mb|tb|kb|gib|mib|gigabytes?|megabytes?|terabytes?|gigs?)\b",
    "date": rf"(?:\b\d{{4}}-\d{{1,2}}-\d{{1,2}}\b|\b\d{{1,2}}/\d{{1,2}}/\d{{2,4}}\b"
    rf"|\b{_DAY}\s+(?:of\s+)?{_MONTHS}\b(?:,?\s+\d{{4}})?|\b{_MONTHS}\s+{_DAY}\b(?:,?\s+\d{{4}})?)",
    # An identifier the text introduces as one: "reference number RX-88321", "ticket #4821", "account 12345678".
    "reference": r"(?:#\s?[a-z0-9-]*\d[a-z0-9-]*|\b(?:reference|ref|ticket|case|order|account|booking|"
    r"confirmation|transaction|claim|customer|member|invoice|tracking)\b(?:\s+(?:number|no\.?|id|code))?"
    r"(?:\s+(?:is|was|:))?\s*:?\s*[a-z]*[-/]?\d[a-z0-9-]{3,})",
}
PREAMBLE = re.compile(
    r"^(?:(?:sure|certainly|of course|absolutely|okay|ok|yes|great question|hello|hi)\b[,!.]?\s*)*"
    r"(?:(?:here(?:'s| is| are)|i(?:'d| would| can| will|'ll| am| 'm)|let me|happy to|glad to)\b[^.!?]*)?[.!:]?$",
    re.IGNORECASE,
)
DANGLING_WORDS = (
    "a", "an", "the", "to", "of", "and", "or", "but", "for", "with", "in", "on", "at", "by", "from", "into", "onto",
    "than", "that", "this", "these", "those", "your", "my", "our", "their", "its", "his", "her", "is", "are", "was",
    "were", "be", "been", "will", "would", "can", "could", "should", "may", "might", "must", "shall", "as", "if",
    "so", "because", "when", "where", "which", "who", "whom", "whose", "while", "via", "per", "such", "including",
    "like", "then", "also", "not", "no", "nor", "either", "neither",
)  # fmt: skip
DANGLING_MARKS = ",;:(-–—/&"  # a text ending on one of these stops mid-sentence (":" is a list or answer never given)


def words(text: str) -> list[str]:
    return WORD.findall((text or "").lower())


def copied_span(answer: str, source_grams: set[tuple[str, ...]], n: int) -> tuple[int, int]:
    """(the longest run of answer words copied from the source, how many answer words are in copied runs): every
    word of an answer n-gram that the source also has counts as copied."""
    tokens = words(answer)
    copied = [False] * len(tokens)
    for i in range(len(tokens) - n + 1):
        if tuple(tokens[i : i + n]) in source_grams:
            copied[i : i + n] = [True] * n
    longest = run = 0
    for c in copied:
        run = run + 1 if c else 0
        longest = max(longest, run)
    return longest, sum(copied)


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    tokens = words(text)
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def _number(text: str) -> str | None:
    found = NUMBER.search(text.replace(" ", ""))
    if not found:
        return None
    value = float(found.group().replace(",", ""))
    return f"{value:g}"


def _date(text: str) -> tuple | None:
    """A date as (month, day, year or None), whatever its format; None when it is not one."""
    clean = re.sub(r"(\d)(st|nd|rd|th)\b", r"\1", text, flags=re.IGNORECASE).replace(" of ", " ")
    dayfirst = not re.match(r"\s*\d{4}-", clean)  # 03/04/2025 is 3 April (as most of the world writes it); ISO is not
    try:
        a = dateparser.parse(clean, default=datetime(1, 1, 1), dayfirst=dayfirst)
        b = dateparser.parse(clean, default=datetime(2, 2, 2), dayfirst=dayfirst)
    except (ValueError, OverflowError):
        return None
    return (a.month, a.day, a.year if a.year == b.year else None)


def _compact(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", (text or "").lower())


class Given:
    """What the inputs (the question, the rules) state: their numbers, dates and text, to check figures against."""

    def __init__(self, *texts: str) -> None:
        text = "\n".join(t or "" for t in texts)
        self.numbers = {f"{float(m.replace(',', '')):g}" for m in NUMBER.findall(text)}
        self.dates = {d for m in re.finditer(FIGURES["date"], text, re.IGNORECASE) if (d := _date(m.group()))}
        self.compact = _compact(text)

    def states(self, kind: str, value: str) -> bool:
        """Whether the inputs state this figure: the same number (an amount or an allowance, in any format), the
        same day (a date, in any format), or the same identifier (case, spaces and punctuation aside)."""
        if kind in ("amount", "data"):
            return _number(value) in self.numbers
        if kind == "date":
            date = _date(value)
            return date is not None and any(
                d[:2] == date[:2] and None in (d[2], date[2]) or d == date for d in self.dates
            )
        ident = re.search(r"[a-z]*[-/]?\d[a-z0-9-]*$", value.strip(), re.IGNORECASE)
        return _compact(ident.group() if ident else value) in self.compact


def invented(answer: str, given: Given, patterns: dict[str, str]) -> list[str]:
    """The specific figures of `answer` (amounts, data allowances, dates, references: `patterns`) that `given`
    does not state, in order of appearance, each once."""
    found: dict[str, None] = {}
    for kind, pattern in patterns.items():
        for m in re.finditer(pattern, answer or "", re.IGNORECASE):
            value = m.group().strip()
            if not given.states(kind, value):
                found.setdefault(value, None)
    return sorted(found, key=lambda v: (answer or "").find(v))


def incomplete(answer: str, dangling: Iterable[str]) -> str | None:
    """Why `answer` is not a whole answer (empty, only a preamble, a word or two and no sentence, cut mid-sentence),
    or None."""
    text = (answer or "").strip()
    if not text:
        return "empty"
    if PREAMBLE.match(text) and len(words(text)) <= 25:
        return "only a preamble"
    end = text.rstrip("\"'”’)*_` ")
    if not end or end[-1] in DANGLING_MARKS:
        return f"ends on {end[-1:]!r}" if end else "empty"
    if len(words(text)) < 3 and end[-1] not in ".!?":  # the 0.5B teacher's "answer": its field's name, no reply
        return f"no sentence: {text[:40]!r}"
    last = words(end[-40:])
    if end[-1].isalnum() and last and last[-1] in set(dangling):
        return f"ends mid-sentence on {last[-1]!r}"
    return None


def argument_values(
    arguments, schema: dict, path: str = "", defs: dict | None = None
) -> Iterable[tuple[str, object, dict]]:
    """(name, value, its schema) for every scalar argument of a call, nested objects and arrays walked (a nested
    name is dotted: `recipient.phone`); a local `$ref` is followed into `defs`."""
    schema = schema or {}
    if "$ref" in schema:
        schema = (defs or {}).get(schema["$ref"].rsplit("/", 1)[-1], {})
    if isinstance(arguments, dict):
        props = schema.get("properties", {})
        for key, value in arguments.items():
            yield from argument_values(value, props.get(key, {}), f"{path}.{key}" if path else key, defs)
    elif isinstance(arguments, list):
        for value in arguments:
            yield from argument_values(value, schema.get("items", {}), path, defs)
    else:
        yield path, arguments, schema


def invented_argument(value, schema: dict, given: Given) -> bool:
    """A specific value the query does not state: a number, or a string with a digit in it (an identifier, a
    postcode, a phone number, a date), that is neither the parameter's default nor one of its enum values. Words
    without digits (a name, a reason) may be paraphrased from the query and are left to the semantic check."""
    if isinstance(value, bool) or value is None:
        return False
    if value == schema.get("default") or value in schema.get("enum", ()) or value == schema.get("const"):
        return False
    if isinstance(value, int | float):
        return f"{float(value):g}" not in given.numbers
    text = str(value)
    if not re.search(r"\d", text):
        return False
    if _compact(text) and _compact(text) in given.compact:
        return False
    date = _date(text) if re.fullmatch(r"[\d\-/.: tTzZ+]+", text) else None
    return not (date and any(d[:2] == date[:2] and d[2] in (None, date[2]) for d in given.dates))
