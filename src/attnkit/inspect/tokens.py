"""A text's tokens as ``explain`` shows them: display strings, the pieces of a word, and the focus token.

A word the tokenizer splits into pieces (WordPiece's "Curie" -> "cu", "##rie"; byte-level BPE's " recurrent" ->
"rec", "urrent") shows ``·`` where its pieces join: "Cu·rie" in the token line; alone, as in the tables, a piece
shows the side it joins on, "Cu·" and "·rie". Texts of more than ``INDEXED_ABOVE`` tokens list every token after
its index ("12:Cu·13:rie"), to pick ``--focus-index`` from.

    >>> find_focus(["[CLS]", "the", "cat", "saw", "the", "dog", "[SEP]"], special, words, "the:2")
    (4, ["focus 'the' occurs 2 times: took the 2nd, token 4; the other: token 1 ('the:1' picks it)"])
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable

from ..functional.checks import check_index

JOIN = "·"  # between the pieces of one word
INDEXED_ABOVE = 16  # a token line of more tokens than this shows each token's index
PRONOUNS = frozenset("it its itself he him his himself she her hers herself they them their theirs themselves "
                     "we us our i me my you your".split())
STOPWORDS = frozenset("a an the and or but if of to in on at by for with from as is was were be been are am do does "
                      "did not no so too very than then that this these those there here what which who whom "
                      "when where why how all any some such can could will would shall should may might must "
                      "has have had s t n't don didn doesn isn wasn".split())

# A token of whitespace alone (byte-level BPE has them: "Ġ", "Ċ", "ĉ") shows as these marks, not as nothing.
_VISIBLE_SPACE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def _visible(span: str) -> str:
    """A token's text as shown: stripped of the spaces around it; whitespace alone as visible marks."""
    return span.strip() or "".join(_VISIBLE_SPACE.get(c, "␣") for c in span)


def display(text: str, encoding, special_ids: set[int], decode: Callable[[int], str]
            ) -> tuple[list[str], list[bool], list[int | None], list[str], list[bool]]:
    """Each token's display string, special flag, word id, the text it adds for word matching, and whether it
    continues the previous token's word (a piece after the first: same word id, no space between their spans).

    A token shows its span of the text (byte-level BPE's "Ġ" space marker never appears: the span is the
    text itself), special tokens as themselves, a token with no span as ``decode`` of its id. A character
    split into several byte-level tokens shows in each of them; only the first adds it to the word.
    """
    tokens, special, pieces, joins, seen = [], [], [], [], 0
    words = list(encoding.word_ids)
    for i, (token_id, token, (start, end)) in enumerate(zip(encoding.ids, encoding.tokens, encoding.offsets)):
        is_special = token_id in special_ids
        if is_special:
            shown = piece = token
        elif end > start:
            shown, piece = _visible(text[start:end]), text[max(start, seen):end].strip()
        else:  # a token the tokenizer added, not read from the text
            shown = piece = _visible(decode(token_id)) or token
        joins.append(i > 0 and not is_special and not special[-1] and words[i] is not None
                     and words[i] == words[i - 1] and _touching(text, encoding.offsets[i - 1], (start, end)))
        tokens.append(shown)
        special.append(is_special)
        pieces.append(piece)
        seen = max(seen, end)
    return tokens, special, words, pieces, joins


def _touching(text: str, before: tuple[int, int], after: tuple[int, int]) -> bool:
    """Two spans of text, each with more than whitespace, with no whitespace between them."""
    (a, b), (c, d) = before, after
    left, right = text[a:b], text[c:d]
    return bool(left.strip() and right.strip()) and c <= b and not left[-1].isspace() and not right[0].isspace()


def label(tokens: list[str], joins: list[bool], i: int) -> str:
    """Token ``i`` alone, with ``·`` on the side(s) where it joins another piece of its word: "Cu·", "·rie"."""
    before = JOIN if joins and joins[i] else ""
    after = JOIN if joins and i + 1 < len(joins) and joins[i + 1] else ""
    return f"{before}{tokens[i]}{after}"


def token_lines(tokens: list[str], joins: list[bool], width: int = 100) -> list[str]:
    """The terminal's token line(s): pieces of a word joined by ``·``; texts of more than ``INDEXED_ABOVE`` tokens
    with each token after its index, wrapped to ``width`` columns."""
    n = len(tokens)
    joined = [i for i in range(n) if joins and joins[i]]
    legend = f"; {JOIN} joins the pieces of a word" if joined else ""
    indexed = n > INDEXED_ABOVE
    words: list[str] = []
    for i, token in enumerate(tokens):
        shown = f"{i}:{token}" if indexed else token
        if words and joins and joins[i]:
            words[-1] += JOIN + shown
        else:
            words.append(shown)
    if not indexed:
        return [f"tokens ({n}{legend}): {' '.join(words)}"]
    body = textwrap.wrap(" ".join(words), width, initial_indent="  ", subsequent_indent="  ",
                         break_long_words=False, break_on_hyphens=False)
    return [f"tokens ({n}, each after its index, for --focus-index{legend}):", *body]


def find_focus(tokens: list[str], special: list[bool], words: list[int | None], focus: str | int | None,
               *, causal: bool = False) -> tuple[int, list[str]]:
    """The focus token, and notes saying what a word matched: the pieces of a split word, the other occurrences.

    ``focus`` is a token index (0..N-1; a negative one is refused like any other out-of-range index); or a word
    of the text, case-insensitive, ``"WORD:N"`` for its N-th occurrence (from 1; default the first, the note
    then lists the others); a word split into pieces is matched whole and stands as its first piece in an
    encoder, its last in a decoder (``causal``: the only piece that has read the whole word); a text that has no
    such word but a token that is ``focus`` matches that token. ``None``: the last pronoun, or else for an
    encoder the last content word, for a decoder the last token (the next token is predicted from it), or else
    the last non-special token. ``tokens`` are the texts the tokens add (``display``'s fourth list)."""
    if isinstance(focus, int) and not isinstance(focus, bool):
        return check_index("focus index", focus, len(tokens), "the text", "tokens"), []
    firsts = _word_starts(tokens, special, words)
    ends = {i: _word_end(words, i) for i in firsts}
    word_text = {i: "".join(tokens[i:ends[i]]).lower() for i in firsts}
    if focus is None:
        return _default_focus(special, firsts, word_text, causal), []
    if not isinstance(focus, str):
        raise TypeError(f"focus must be a word (str), a token index (int) or None, got {type(focus).__name__}")

    def matches(wanted: str) -> list[tuple[int, int]]:
        return [(i, ends[i]) for i in firsts if word_text[i] == wanted] or \
               [(i, i + 1) for i, t in enumerate(tokens) if t.lower() == wanted]

    word, nth = focus.strip(), None
    numbered = re.fullmatch(r"(.+):(\d+)", word)
    if not matches(word.lower()) and numbered:
        word, nth = numbered[1].strip(), int(numbered[2])
    wanted = word.lower()
    found = matches(wanted)
    if not found:
        shown = ", ".join(repr(_word(tokens, words, i)) for i in firsts[:40])
        raise ValueError(f"focus word {focus!r} is not in the text; its words: {shown}")
    if nth is not None and not 1 <= nth <= len(found):
        raise ValueError(f"focus {focus!r}: {word!r} occurs {len(found)} time(s) in the text (at tokens "
                         f"{', '.join(str(a) for a, _ in found)}); WORD:N counts from 1")
    chosen = (nth or 1) - 1
    start, end = found[chosen]
    at = [b - 1 if causal else a for a, b in found]  # the token that stands for each match
    notes = [_matched(tokens, word, start, end, at[chosen], causal)] if end - start > 1 else []
    if len(found) > 1:
        others = [k for k in range(len(found)) if k != chosen]
        rest = (f"the other: token {at[others[0]]} ('{word}:{others[0] + 1}' picks it)" if len(others) == 1 else
                f"the others: tokens {', '.join(str(at[k]) for k in others)} ('{word}:N' picks the N-th)")
        notes.append(f"focus {word!r} occurs {len(found)} times: took the {_ordinal(chosen + 1)}, token {at[chosen]}; "
                     f"{rest}")
    return at[chosen], notes


def _matched(tokens: list[str], word: str, start: int, end: int, index: int, causal: bool) -> str:
    which, why = ("last", "in a decoder, the piece that has read the whole word") if causal else \
                 ("first", "as usual for an encoder")
    pieces = JOIN.join(tokens[start:end])
    return (f"focus {word!r} is the word {pieces!r} of {end - start} pieces (tokens {start}-{end - 1}); its {which} "
            f"piece, token {index}, stands for it ({why})")


def choose_focus(tokens: list[str], special: list[bool], words: list[int | None], focus: str | int | None,
                 *, causal: bool = False) -> int:
    """The focus token's index: :func:`find_focus` without its note."""
    return find_focus(tokens, special, words, focus, causal=causal)[0]


def _default_focus(special: list[bool], firsts: list[int], word_text: dict[int, str], causal: bool) -> int:
    rules = [lambda w: w in PRONOUNS] + ([] if causal else [lambda w: w.isalpha() and w not in STOPWORDS])
    for pick in rules:
        chosen = [i for i in firsts if pick(word_text[i])]
        if chosen:
            return chosen[-1]
    plain = [i for i, s in enumerate(special) if not s]
    return plain[-1] if plain else len(special) - 1


def _word_starts(tokens: list[str], special: list[bool], words: list[int | None]) -> list[int]:
    """The first token of each word that has text: a word's leading tokens without any (byte-level BPE's lone
    space token "Ġ" ahead of "it") are skipped, so that the word's focus token is one that shows it."""
    firsts, pending = [], False
    for i, w in enumerate(words):
        pending = pending or i == 0 or words[i - 1] != w  # a new word begins at i
        if pending and not special[i] and tokens[i].strip():
            firsts.append(i)
            pending = False
    return firsts


def _word_end(words: list[int | None], first: int) -> int:
    """One past the last token of the word that starts at token ``first``."""
    end = first + 1
    while end < len(words) and words[end] is not None and words[end] == words[first]:
        end += 1
    return end


def _word(tokens: list[str], words: list[int | None], first: int) -> str:
    """The whole word that starts at token ``first``: its tokens' spans joined."""
    return "".join(tokens[first:_word_end(words, first)])


def _ordinal(n: int) -> str:
    return f"{n}{'st' if n == 1 else 'nd' if n == 2 else 'rd' if n == 3 else 'th'}"
