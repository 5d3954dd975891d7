"""How a trajectory's steps are written into training examples, and read back from them: the `tool` message of a
call's result, and the json_content form, where the Databricks chat format has no tool role.

json_content flattens a trajectory faithfully: every step in order, every value as the sandbox returned it. The
assistant's calls are its content (a JSON list), the results come back as the next user message, `Tool results:`
and a JSON list of `{"name", "result"}` in the order of the calls, then the assistant answers. The system prompt
states this protocol (PROTOCOL), so a student trained on it expects results in that form, and is served the same way.
"""

from __future__ import annotations

import json

from lakesynth.tools import ast_match

RESULTS = "Tool results:\n"
PROTOCOL = f"""
After your calls, their results come back in a message that starts with "{RESULTS.strip()}", a JSON list with one
{{{{"name": ..., "result": ...}}}} per call, in the order of your calls; then answer the request in words, from them."""


def tool_content(result) -> str:
    """A `tool` message's content: what the sandbox returned for the call, as JSON."""
    return json.dumps(result, ensure_ascii=False)


def trajectory(query: str, calls: list[dict], returned: list, answer: str) -> list[dict]:
    """A pair with its final answer as OpenAI-style messages: the query, the assistant's calls (ids call_1...), one
    `tool` message per call with what the sandbox returned (`returned`, in the order of the calls), the answer."""
    ids = [f"call_{i}" for i in range(1, len(calls) + 1)]
    return [
        {"role": "user", "content": query},
        {"role": "assistant", "tool_calls": [{"id": i, "function": c} for i, c in zip(ids, calls)]},
        *[{"role": "tool", "content": tool_content(r), "tool_call_id": i} for i, r in zip(ids, returned)],
        {"role": "assistant", "content": answer},
    ]


def results_message(calls: list[dict], returned: list) -> str:
    """json_content's user message with the results of `calls`, in their order."""
    results = [{"name": c["name"], "result": r} for c, r in zip(calls, returned)]
    return RESULTS + json.dumps(results, ensure_ascii=False)


def returned_in(message: str) -> list:
    """The results a json_content results message carries, in the order of the calls."""
    return [r["result"] for r in json.loads(message[len(RESULTS) :])]


def is_results(message: dict) -> bool:
    return message["role"] == "tool" or (
        message["role"] == "user" and (message.get("content") or "").startswith(RESULTS)
    )


def split(messages: list[dict]) -> tuple[list[tuple[int, list]], int | None]:
    """A json_content example's steps: (index, expected calls) of each assistant message of calls (`[]`: no call
    fits), and the index of its final answer (the last assistant text after results), or None. A text reply to the
    user (a question back, in a dialog) is neither."""
    calls, final = [], None
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        parsed = ast_match.parse_reply(m["content"])
        if parsed is not None and not (parsed == [] and is_results(messages[i - 1])):
            calls.append((i, parsed))
        elif is_results(messages[i - 1]):  # text after results: an answer from them (the last one is scored)
            final = i
    return calls, final


def flattened(messages: list[dict]) -> list[dict]:
    """OpenAI-style messages (assistant `tool_calls`, `tool` results) in json_content's form: the calls as the
    assistant's JSON content, each step's results as one user message, in the order of the calls."""
    out: list[dict] = []
    calls: list[dict] = []
    returned: list = []
    for m in messages:
        if m["role"] == "tool":
            returned.append(json.loads(m["content"]))
            if len(returned) == len(calls):
                out.append({"role": "user", "content": results_message(calls, returned)})
            continue
        if m.get("tool_calls"):
            calls = [c["function"] for c in m["tool_calls"]]
            returned = []
            listed = [{"name": c["name"], "arguments": c["arguments"]} for c in calls]
            out.append({"role": "assistant", "content": json.dumps(listed, ensure_ascii=False)})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return out
