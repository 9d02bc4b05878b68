"""Escaping for model cards: every value a template shows is text, never Markdown, HTML or a link.

Label names, data set and column names, metric keys and config values come from data files and configs
that may not be the user's own, and a card is rendered as Markdown (with inline HTML) on the Hub. The
card environment (:func:`environment`) therefore escapes every ``{{ value }}`` by default
(:func:`md_text`); a template opts into another context with a filter:

===================  =======================================================================================
filter               output
===================  =======================================================================================
(none)               :func:`md_text`: one line of plain text: HTML-escaped, Markdown punctuation that could
                     start a link, image, emphasis, code span, math or table cell backslash-escaped
``| code``           :func:`md_code`: an inline code span that no backtick, pipe or newline in the value
                     can close or break
``| pystr``          :func:`py_string`: a Python string literal on one line, as plain text to escape
                     further (``| pystr | line`` inside fenced ``python``, ``| code`` in a span)
``| pyname``         :func:`py_name`: a Python identifier made from the value (inside fenced ``python``)
``| shell``          :func:`shell_word`: one shell word (inside fenced ``bash``)
``| line``           :func:`one_line`: the value on one line, unescaped (inside fenced blocks: hftl's own
                     commands, already quoted)
``| codeblock(lang)`` :func:`code_block`: a fenced block whose fence is longer than any backtick run in it
``| url``            :func:`url_path`: a percent-encoded relative path (link and image targets)
``| join``           the builtin, with each item escaped by :func:`md_text`
===================  =======================================================================================

Numbers, booleans, ``None`` and lists/dicts of them are shown as Python prints them (they cannot hold
markup). The card's YAML front matter is written by :class:`huggingface_hub.ModelCardData` and checked
to parse back (:func:`hftl.hub.card.build_card`).
"""

from __future__ import annotations

import functools
import json
import keyword
import re
import shlex
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from markupsafe import Markup, escape

# Line breaks (CommonMark's and Unicode's) and other control characters: a value stays on its line, so it
# cannot end a table row, start a heading or list, or close a fenced block.
_BREAKS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]+")
# Backslash-escaped everywhere: code spans, emphasis, links and images, table cells, strikethrough, math.
_PUNCT = re.compile(r"([\\`*\[\]|~$])")
# `_` opens or closes emphasis only at a word boundary (`token_head` is safe, `_x_` is not).
_UNDERSCORE = re.compile(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
# What starts a block when it begins a line: heading, quote, list item, thematic break, setext underline,
# ordered list item (its `.` or `)` is escaped: a backslash before a digit would show).
_BLOCK_START = re.compile(r"^(\s*)([#>+=-](?=[\s#>+=-]|$)|\d{1,9}(?=[.)](?:\s|$)))")


def _plain_value(value: Any) -> bool:
    """Numbers, booleans, ``None`` and containers of only those: no markup can hide in them."""
    if value is None or isinstance(value, bool | int | float):
        return True
    if isinstance(value, list | tuple):
        return all(_plain_value(v) for v in value)
    if isinstance(value, dict):
        return all(_plain_value(k) and _plain_value(v) for k, v in value.items())
    return False


def md_text(value: Any) -> Markup:
    """``value`` as one line of literal text in Markdown (what every ``{{ value }}`` of a card goes through).

    Example:
        >>> str(md_text("<script>x</script> [a](javascript:b) a|b"))
        '&lt;script&gt;x&lt;/script&gt; \\\\[a\\\\](javascript:b) a\\\\|b'
    """
    if isinstance(value, Markup):
        return value
    if _plain_value(value):
        return Markup(escape(str(value)))
    text = _BREAKS.sub(" ", str(value))
    text = _UNDERSCORE.sub(r"\\_", _PUNCT.sub(r"\\\1", text))
    text = _BLOCK_START.sub(_escape_block_start, text)
    return Markup(escape(text))


def _escape_block_start(match: re.Match) -> str:
    space, start = match.groups()
    return f"{space}{start}\\" if start[0].isdigit() else f"{space}\\{start}"


def md_join(values: Any, separator: str = "") -> Markup:
    """The ``join`` filter with every item escaped as :func:`md_text` (the separator is template text)."""
    return Markup(escape(separator)).join(md_text(v) for v in values)


def md_code(value: Any) -> Markup:
    """An inline code span showing ``value`` literally (CommonMark: a fence longer than any run inside).

    Pipes are escaped so a span inside a table cell does not split the cell (GFM tables).
    """
    text = _BREAKS.sub(" ", str(value)).replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return Markup(f"{fence}{pad}{text}{pad}{fence}")


def py_string(value: Any) -> str:
    """A double-quoted Python string literal of ``value`` on one line (plain text: escape it for its place)."""
    return _BREAKS.sub(" ", json.dumps(str(value), ensure_ascii=False))


def py_name(value: Any) -> Markup:
    """A Python identifier for ``value`` (a variable named after a task): non-word characters become ``_``."""
    name = re.sub(r"\W", "_", str(value), flags=re.ASCII)
    return Markup(name if name.isidentifier() and not keyword.iskeyword(name) else f"task_{name}")


def shell_word(value: Any) -> Markup:
    """``value`` quoted as one POSIX shell word, on one line."""
    return Markup(shlex.quote(_BREAKS.sub(" ", str(value))))


def one_line(value: Any) -> Markup:
    """``value`` with line breaks replaced by spaces, not escaped (hftl's own text inside fenced blocks)."""
    return Markup(_BREAKS.sub(" ", str(value)))


def code_block(value: Any, lang: str = "") -> Markup:
    """A fenced code block that no line of ``value`` can close (its fence is longer than any inside)."""
    text = str(value).replace("\r\n", "\n").replace("\r", "\n")
    fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return Markup(f"{fence}{lang}\n{text}\n{fence}")


def url_path(value: Any) -> Markup:
    """A relative path percent-encoded for a Markdown link or image target."""
    return Markup(quote(str(value), safe="/"))


def finalize(value: Any) -> Any:
    """Jinja's ``finalize``: every ``{{ value }}`` not already marked safe is escaped by :func:`md_text`."""
    return md_text(value)


@functools.cache
def environment():
    """The Jinja environment of the card templates (``hftl/hub/templates``): values escaped by default."""
    import jinja2

    def source(name: str) -> str | None:
        path = resources.files("hftl.hub") / "templates" / name
        return path.read_text(encoding="utf-8") if path.is_file() else None

    env = jinja2.Environment(loader=jinja2.FunctionLoader(source), autoescape=True, finalize=finalize)
    env.filters.update(
        join=md_join,
        code=md_code,
        pystr=py_string,
        pyname=py_name,
        shell=shell_word,
        line=one_line,
        codeblock=code_block,
        url=url_path,
    )
    env.tests["hub_id"] = is_hub_id
    return env


def is_hub_id(value: Any) -> bool:
    """Jinja test ``is hub_id``: a ``user/name`` Hub id (not a local path), safe to link to the Hub."""
    from hftl.hub.run_files import HUB_ID

    return isinstance(value, str) and bool(HUB_ID.match(value)) and not Path(value).exists()
