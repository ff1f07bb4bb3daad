"""The one token estimator: what the gateway reserves before an answer, what it commits
when an upstream reports no usage, and what Ask Sage's tokenizer answers.

An estimate, not a tokenizer: no vocabulary to download, the same count on every machine.
Text is cut into words (runs of letters, digits and underscores) and single other
characters (punctuation, symbols, emoji); whitespace is free. A word costs one token per
four characters begun, as BPE vocabularies average about four characters a token of English
text; any other character costs one. So "Hello, world!" is 6 tokens (Hello: 2, world: 2, two
marks), "internationalization" is 5, and a letter of a script written without spaces (CJK,
Hangul) is a token of its own, as it about is in those vocabularies. It leans high rather
than low on English prose, which suits a reservation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

CHARACTERS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4
"""Tokens a chat message costs besides its content (its role and separators)."""
REPLY_OVERHEAD = 3
"""Tokens every chat prompt costs besides its messages (the reply's priming)."""

_PIECES = re.compile(r"[^\W\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff]+|\S", re.UNICODE)


def estimate_tokens(text: str) -> int:
    """Tokens in `text`, estimated: one a four characters of a word, one an other character."""
    count = 0
    for piece in _PIECES.findall(text):
        count += -(-len(piece) // CHARACTERS_PER_TOKEN)
    return count


def estimate_input(value: Any) -> int:
    """Tokens of a prompt or embedding input as OpenAI accepts it: a string, a list of
    strings, a list of token ids, or a list of lists of token ids."""
    if value is None:
        return 0
    if isinstance(value, str):
        return estimate_tokens(value)
    if isinstance(value, list):
        if all(isinstance(item, int) for item in value):
            return len(value)
        return sum(estimate_input(item) for item in value)
    return estimate_tokens(str(value))


def estimate_messages(messages: Iterable[Any]) -> int:
    """Tokens of a chat prompt: each message's text (content parts of type text included)
    and name, plus MESSAGE_OVERHEAD a message and REPLY_OVERHEAD."""
    count = REPLY_OVERHEAD
    for message in messages:
        count += MESSAGE_OVERHEAD
        if not isinstance(message, dict):
            continue
        count += estimate_content(message.get("content"))
        if isinstance(message.get("name"), str):
            count += estimate_tokens(message["name"])
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict):
                count += estimate_tokens(str(call.get("function", "")))
    return count


def estimate_content(content: Any) -> int:
    """Tokens of a message's content: a string, or a list of parts (their text)."""
    if isinstance(content, str):
        return estimate_tokens(content)
    if isinstance(content, list):
        return sum(
            estimate_tokens(part["text"])
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return 0
