"""Rule-based constraint detection: find IFEval-style constraints in free instruction text.

`rule_decompose(text)` recognises the IFEval constraint types (and the two microworld-only
types) with regexes over the phrasings such prompts use, and returns typed `Constraint`s with
IFEval argument names and values; `find_constraints(text)` also gives each one's character
spans (used by `decompose.decompose_instruction` to separate the task from its constraints).

Contents: the lexical building blocks (number words, count bounds, quoted word lists, negation,
sentence splitting), one `_d_*` detector per family of phrasings, and the overlap/merge rules
that combine their findings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from musc_jax.data.constraints import LANGUAGE_CODES, ORDINALS, Constraint

# --------------------------------------------------------------------------------------------
# Lexical building blocks
# --------------------------------------------------------------------------------------------

_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty".split())}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
         "eighty": 80, "ninety": 90}
_ONES = "one|two|three|four|five|six|seven|eight|nine"
NUM = (r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+|(?:" + "|".join(_TENS) + r")[\s-](?:" + _ONES + r")|"
       r"(?:(?:a|" + _ONES + r")\s+)?hundred|" + "|".join(sorted(set(_UNITS) | set(_TENS), key=len, reverse=True))
       + r"|a\s+single|a\s+couple\s+of)")


def parse_num(s: str) -> int:
    """Digits or English number words ("twenty-five", "a hundred") to int."""
    s = s.strip().lower().replace(",", "")
    if s.isdigit():
        return int(s)
    if s in ("a single", "single"):
        return 1
    if s.startswith("a couple"):
        return 2
    if s.endswith("hundred"):
        head = s[:-len("hundred")].strip()
        return 100 * (_UNITS[head] if head in _UNITS else 1)
    parts = re.split(r"[\s-]+", s)
    if len(parts) == 2 and parts[0] in _TENS:
        return _TENS[parts[0]] + _UNITS[parts[1]]
    if s in _TENS:
        return _TENS[s]
    return _UNITS[s]


def _g(name: str) -> str:
    return rf"(?P<{name}>{NUM})"


# A bound on a count, in the many ways prompts say it. Each alternative has its own groups so
# `_bound_of` can map it to IFEval's two relations ("less than", "at least").
BOUND = (
    r"(?:(?:between|from)\s+" + _g("ra") + r"\s+(?:and|to)\s+" + _g("rb") + "|"
    + _g("rc") + r"\s*(?:-|–|to)\s*" + _g("rd") + "|"
    + r"(?:at\s+least|no\s+(?:less|fewer)\s+than|not\s+(?:less|fewer)\s+than|a\s+minimum\s+of|"
      r"minimum\s+of|min\.)\s+" + _g("al") + "|"
    + _g("am") + r"\s*(?:\+|or\s+more|or\s+greater|or\s+above)|"
    + r"(?:more\s+than|over|greater\s+than|above|in\s+excess\s+of|exceeding)\s+" + _g("mt")
    + "|"
    + r"(?:less\s+than|fewer\s+than|under|below|shorter\s+than)\s+" + _g("lt") + "|"
    + r"(?:at\s+most|no\s+more\s+than|not\s+more\s+than|up\s+to|a\s+maximum\s+of|maximum\s+of|"
      r"max\.|not\s+exceed(?:ing)?|within)\s+" + _g("ms") + "|"
    + _g("mo") + r"\s+or\s+(?:less|fewer|below))"
)

TIMES = (r"(?:" + BOUND + r")\s+(?:more\s+)?(?:times|occurrences|instances)\b|"
         r"(?P<cmp>more\s+than|over|less\s+than|fewer\s+than|at\s+most|no\s+more\s+than|"
         r"at\s+least)\s+(?P<once2>once|twice|thrice)\b|"
         r"(?P<once>once|twice|thrice)\b|"
         r"(?P<plain>" + NUM + r")\s+times\b")


def _bound_of(m: re.Match) -> list[tuple[str, int]]:
    """[(relation, n)] for a BOUND match: ranges give two bounds, "more than N" is at least N+1,
    "at most N" is less than N+1 (IFEval's labels use the same conventions)."""
    g = {k: v for k, v in m.groupdict().items() if v is not None}
    if "ra" in g or "rc" in g:
        lo, hi = (g["ra"], g["rb"]) if "ra" in g else (g["rc"], g["rd"])
        return [("at least", parse_num(lo)), ("less than", parse_num(hi) + 1)]
    for k, rel, add in (("al", "at least", 0), ("am", "at least", 0), ("mt", "at least", 1),
                        ("lt", "less than", 0), ("ms", "less than", 1), ("mo", "less than", 1)):
        if k in g:
            return [(rel, parse_num(g[k]) + add)]
    times = {"once": 1, "twice": 2, "thrice": 3}
    if "once2" in g:
        n, cmp = times[g["once2"].lower()], re.sub(r"\s+", " ", g["cmp"].lower())
        return [{"more than": ("at least", n + 1), "over": ("at least", n + 1),
                 "at least": ("at least", n), "less than": ("less than", n),
                 "fewer than": ("less than", n)}.get(cmp, ("less than", n + 1))]
    if "once" in g:
        return [("at least", times[g["once"].lower()])]
    if "plain" in g:
        return [("at least", parse_num(g["plain"]))]
    return []


QUOTED = r"\"(?P<dq>[^\"\n]{1,80})\"|(?<![\w])'(?P<sq>[^'\n]{1,60})'(?!\w)"
NEG_BEFORE = re.compile(
    r"(?:\bnot|n't|\bnever|\bwithout|\bavoid(?:ing)?|\brefrain(?:ing)?\s+from|\bno)\s+"
    r"(?:[\w']+\s+){0,2}$", re.I)
# "Don't forget to include ..." is a positive request.
_NOT_NEG = re.compile(r"(?:do\s+not|don't|never)\s+forget\s+(?:to\s+)?", re.I)

_STOP = set("""a an the in at on to of for from with by into onto about throughout anywhere
    anything any all your my our their its it this that these those them they should must
    may can will would shall is are be been being was were appear appears appearing used use
    using more less than once twice thrice times time and or nor but so as like such such
    which when where while if then there here also too only just even please response answer
    reply essay text output story poem letter post blog article before after either neither
    whatsoever i me you he she we us him her it""".split())


def _flip(rel: str) -> str:
    return "less than" if rel == "at least" else "at least"


def _negated(text: str, pos: int) -> bool:
    """Whether the words right before `pos` negate what follows (within its sentence)."""
    start = max(text.rfind(c, 0, pos) for c in ".!?\n") + 1
    before = _NOT_NEG.sub(" ", text[start:pos])
    return bool(NEG_BEFORE.search(before))


def _word_list(text: str, pos: int, bare: bool = True, max_items: int = 8
               ) -> tuple[list[str], int]:
    """Parse `"a", "b" and "c"` (or bare `a, b and c`) starting at pos; (items, end)."""
    sep = re.compile(r"\s*(?:,\s*(?:and\s+|or\s+|&\s+)?|\s+(?:and|or|&|as\s+well\s+as)\s+)", re.I)
    item_q = re.compile(r"\s*(?::\s*)?(?:" + QUOTED + ")")
    item_b = re.compile(r"\s*(?::\s*)?(?P<b>[A-Za-z][A-Za-z0-9-]*)\b(?!')")
    items: list[str] = []
    br = re.match(r"\s*:?\s*\[(?=\s*[\"'])", text[pos:])  # Python-style ['a', 'b']
    i = pos + br.end() if br else pos
    quoted = None
    while len(items) < max_items:
        j = i
        if items:
            s = sep.match(text, i)
            if not s:
                break
            j = s.end()
        m = item_q.match(text, j)
        if m and quoted is not False:
            items.append((m.group("dq") or m.group("sq")).strip())
            quoted, i = True, m.end()
            continue
        m = item_b.match(text, j) if bare and quoted is not True else None
        if m and m.group("b").lower() not in _STOP:
            items.append(m.group("b"))
            quoted, i = False, m.end()
            continue
        break
    if br and items:
        close = re.match(r"\s*\]", text[i:])
        i += close.end() if close else 0
    return items, i


def _norm(text: str) -> str:
    """Curly quotes to straight ones, one character for one so offsets stay valid."""
    return text.translate(str.maketrans({"“": '"', "”": '"', "„": '"', "‘": "'", "’": "'"}))


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Sentence (or line) spans; never splits inside double quotes or after i.e./e.g./P.S."""
    spans, start, inq = [], 0, False
    n = len(text)
    i = 0
    while i < n:
        ch = text[i]
        if ch == '"':
            inq = not inq
            if (not inq and i > 0 and text[i - 1] in ".!?" and i + 1 < n
                    and text[i + 1] in " \t" and i + 2 < n and text[i + 2].isupper()):
                spans.append((start, i + 1))  # 'text: "It is late." Write ...'
                start = i + 1
        elif ch == "\n":
            inq = False
            if text[start:i].strip():
                spans.append((start, i))
            start = i + 1
        elif ch in ".!?" and not inq:
            j = i + 1
            while j < n and text[j] in "\"')]":
                j += 1
            if j >= n or text[j] in " \t":
                word = re.search(r"(\S+)$", text[start:i + 1])
                if word and re.fullmatch(r"(?:i\.e|e\.g|etc|vs|P\.P\.S|P\.S|Mr|Mrs|Dr|St|"
                                         r"[A-Z]|\d+)\.", word.group(1), re.I) is None:
                    spans.append((start, j))
                    start = j
                i = j
                continue
        i += 1
    if text[start:].strip():
        spans.append((start, n))
    return [(a + len(text[a:b]) - len(text[a:b].lstrip()), b) for a, b in spans]


# --------------------------------------------------------------------------------------------
# Detectors: each returns Found(constraint, start, end) for one family of phrasings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """A recognised constraint; [start, end) is its main phrase, `more` other spans that
    belong to it (a separator mention, an example layout) so whole sentences can be assigned."""

    constraint: Constraint
    start: int
    end: int
    more: tuple[tuple[int, int], ...] = ()

    def spans(self) -> list[tuple[int, int]]:
        return [(self.start, self.end), *self.more]


def _mentions(pattern: str, text: str) -> tuple[tuple[int, int], ...]:
    return tuple((m.start(), m.end()) for m in re.finditer(pattern, text, re.I))


class _Doc:
    """The normalised text plus sentence spans, shared by all detectors."""

    def __init__(self, text: str):
        self.text = _norm(text)
        self.spans = sentence_spans(self.text)

    def sentence_at(self, pos: int) -> tuple[int, int]:
        for a, b in self.spans:
            if a <= pos < b:
                return a, b
        return pos, pos

    def next_sentence(self, pos: int) -> tuple[int, int] | None:
        for a, b in self.spans:
            if a >= pos:
                return a, b
        return None


def _c(id: str, **kwargs: Any) -> Constraint:
    return Constraint(id, kwargs)


def _iter(pattern: str, text: str, flags: int = re.I) -> Iterable[re.Match]:
    return re.finditer(pattern, text, flags)


def _d_no_comma(d: _Doc) -> list[Found]:
    out = []
    for m in _iter(r"\bcommas?\b(?!-)", d.text):
        a, _ = d.sentence_at(m.start())
        before = _NOT_NEG.sub(" ", d.text[a:m.start()])
        after = d.text[m.end():m.end() + 40]
        if (re.search(r"(?:\bnot?|n't|\bnever|\bwithout|\bavoid\w*|\brefrain\w*|\bcannot|\bzero|"
                      r"\bfree\s+of)\b(?:\s+[\w']+){0,5}\s*$", before, re.I)
                or re.match(r"\s+(?:are|is)\s+(?:not\s+allowed|forbidden|prohibited|banned)",
                            after, re.I)):
            out.append(Found(_c("punctuation:no_comma"), m.start(), m.end()))
    return out


_CAP = r"(?:capital(?:\s+letters?|s)?|caps|upper[\s-]?case(?:\s+letters?)?|capitali[sz]ed)"
_CAPWORD = (r"\bwords?\s+(?:with|in|written\s+in|that\s+(?:are|is)(?:\s+in)?|which\s+(?:are|is)"
            r"(?:\s+in)?|having|of)\s+(?:all\s+)?" + _CAP + r"|\b(?:all[\s-]?caps|all[\s-]capital"
            r"(?:ized)?|capitali[sz]ed|upper[\s-]?case|capital)\s+words\b")


def _d_capital_words(d: _Doc) -> list[Found]:
    out: list[Found] = []
    for m in _iter(_CAPWORD, d.text):
        a, b = d.sentence_at(m.start())
        bounds = [bm for bm in _iter(TIMES, d.text[m.end():b])]
        more = ()
        nxt = d.next_sentence(b)
        if not bounds and nxt and re.search(r"\b(?:those|these|such|them|they)\b",
                                            d.text[nxt[0]:nxt[1]], re.I):
            bounds = list(_iter(TIMES, d.text[nxt[0]:nxt[1]]))  # "Limit those words to ..."
            more = (nxt,) if bounds else ()
        pairs = [p for bm in bounds for p in _bound_of(bm)] or [("at least", 1)]
        for rel, n in pairs:
            out.append(Found(_c("change_case:capital_word_frequency", capital_relation=rel,
                                capital_frequency=n), m.start(), m.end(), more))
    return out


# A counted phrase whose words must be capitalised: "capitalize at least 5 words (fully)",
# "fewer than 4 words (that are) written entirely in capital letters".
_CAP_COUNTED = (r"(?P<verb>\bcapitali[sz]e\s+(?:fully\s+|entirely\s+)?)?(?:" + BOUND + r")\s+"
                r"(?:different\s+|distinct\s+)?words\b(?P<tail>\s+(?:that\s+(?:are|is)\s+|"
                r"which\s+(?:are|is)\s+)?(?:written\s+|typed\s+|spelled\s+)?(?:entirely\s+|fully\s+|"
                r"completely\s+|wholly\s+)?(?:in\s+)?(?:all\s+)?" + _CAP + r")?")


def _d_capital_counted(d: _Doc) -> list[Found]:
    out: list[Found] = []
    for m in _iter(_CAP_COUNTED, d.text):
        if not (m.group("verb") or m.group("tail")):
            continue   # a plain word count
        for rel, n in _bound_of(m):
            out.append(Found(_c("change_case:capital_word_frequency", capital_relation=rel,
                                capital_frequency=n), m.start(), m.end()))
    return out


def _d_case(d: _Doc) -> list[Found]:
    out = []
    capword_spans = [(m.start(), m.end()) for m in _iter(_CAPWORD, d.text)]
    for m in _iter(r"\b(?:all|only|entirely|completely|in)\s+(?:in\s+)?(?:all\s+)?"
                   r"(?:capital\s+letters|capitals|caps|upper[\s-]?case(?:\s+letters)?|"
                   r"capitali[sz]ed\s+letters)\b|\ball[\s-]caps\b|\ball\s+(?:the\s+)?letters\b"
                   r"[^.!?\n]{0,40}?\b(?:capitali[sz]ed|in\s+upper[\s-]?case)\b|\b(?:entire|whole)"
                   r"\s+(?:response|answer|reply|output)\s+(?:should|must)\s+be\s+capitali[sz]ed",
                   d.text):
        if any(s <= m.end() and m.start() <= e for s, e in capword_spans):
            continue  # "words with all capital letters" is a frequency constraint
        if not _negated(d.text, m.start()):
            out.append(Found(_c("change_case:english_capital"), m.start(), m.end()))
    for m in _iter(r"\blower[\s-]?case\b|\bno\s+(?:capital|upper[\s-]?case)\s+letters\b|"
                   r"\b(?:only|just|all)\s+(?:in\s+)?small\s+letters\b|\bno\s+capitali[sz]ation\b|"
                   r"\bno\s+capitals\b|\bcapital\s+letters\s+are\s+not\s+allowed|\bwithout\s+"
                   r"(?:any\s+|using\s+)?capital(?:s|\s+letters)\b", d.text):
        if not re.match(r"lower", m.group(0), re.I) or not _negated(d.text, m.start()):
            out.append(Found(_c("change_case:english_lowercase"), m.start(), m.end()))
    return out


_LANG_NAMES = {name: code for code, name in LANGUAGE_CODES.items()}
_LANG_AFTER = (r"(?=\s*(?:[,.;:!?)]|$|\s+(?:language|only|and|no|please|but|so|as|to|for|"
               r"with|without|throughout|entirely|too|also|the|about|that|how|what|why|"
               r"letters|script|characters)\b))")


def _d_language(d: _Doc) -> list[Found]:
    out = []
    for name, code in _LANG_NAMES.items():
        # Names that are also common words ("Polish") must be capitalised to count.
        flags = 0 if name in ("Polish",) else re.I
        pat = (r"\b(?:in|into|using|use|only)\s+(?:only\s+)?(?:the\s+)?(?:entirely\s+|completely"
               r"\s+|only\s+)?(?:the\s+)?" + name + r"\b" + _LANG_AFTER +
               r"|\b" + name + r"\s+(?:language|only)\b")
        for m in _iter(pat, d.text, flags):
            a, b = d.sentence_at(m.start())
            sentence = d.text[a:b]
            if code == "en" and (not re.search(r"no\s+other\s+language", sentence, re.I)
                                 or re.search(r"capital|lower[\s-]?case|upper[\s-]?case",
                                              sentence, re.I)):
                continue  # "in English, all lowercase" is a case constraint, not a language one
            out.append(Found(_c("language:response_language", language=code), m.start(),
                             m.end()))
    return out


_KW_NOUN = r"(?P<noun>key\s?words?|words?|terms?|phrases?)"
_DET = r"(?:(?:the|these|those|following|this|all|both|of|any|two|three|four|five)\s+){0,3}"


def _bare_ok(noun: str) -> bool:
    return not noun.lower().startswith(("phrase", "term"))


def _d_forbidden(d: _Doc) -> list[Found]:
    out = []
    t = d.text
    pre = (r"(?:\bnot|n't|\bnever|\bwithout|\bavoid(?:ing)?|\brefrain(?:ing)?\s+from|\bno)\s+"
           r"(?:(?:be\s+|ever\s+)?(?:using|use|used|including|include|included|mentioning|mention|"
           r"mentioned|saying|say|said|containing|contain|contained|having|have|writing|write)\s+)?")
    for m in _iter(pre + _DET + _KW_NOUN + r"\b", t):
        if _NOT_NEG.search(t[max(0, m.start() - 12):m.end()]):
            continue
        words, end = _word_list(t, m.end(), bare=_bare_ok(m.group("noun")))
        if words:
            out.append(Found(_c("keywords:forbidden_words", forbidden_words=words), m.start(),
                             end))
    # "do not mention nursery and storytelling": a list straight after the verb (bare words
    # only after "mention": "do not use any commas" must not forbid "any").
    for m in _iter(r"(?:\bnot|n't|\bnever|\bwithout|\bavoid(?:ing)?)\s+(?:mention(?:ing)?|"
                   r"say(?:ing)?|us(?:e|ing))\s+", t):
        words, end = _word_list(t, m.end(), bare=bool(re.search("mention", m.group(0), re.I)))
        if words and not re.match(_DET + _KW_NOUN, t[m.end():], re.I):
            out.append(Found(_c("keywords:forbidden_words", forbidden_words=words), m.start(),
                             end))
    # 'The word "rock" should not appear', "the word education doesn't appear at all".
    for m in _iter(r"\b(?:the\s+)?" + _KW_NOUN + r"\s+", t):
        words, end = _word_list(t, m.end(), bare=_bare_ok(m.group("noun")))
        tail = re.match(r"\s+(?:should|must|may|can|shall|will|do(?:es)?)\s*(?:not|n't)\s+"
                        r"(?:be\s+)?(?:appear|used|use|included|mentioned|show\s+up|occur)|"
                        r"\s+(?:is|are)\s+(?:not\s+allowed|forbidden|prohibited|banned)", t[end:],
                        re.I)
        if words and tail:
            out.append(Found(_c("keywords:forbidden_words", forbidden_words=words), m.start(),
                             end + tail.end()))
    return out


def _d_frequency(d: _Doc) -> list[Found]:
    out = []
    t = d.text
    for m in _iter(r"\b(?:(?:the\s+)?(?:key)?word|(?:include|use|mention|say|repeat)(?:s|ing)?)"
                   r"\s+", t):
        is_noun = m.group(0).lower().strip().endswith("word")
        words, end = _word_list(t, m.end(), bare=is_noun, max_items=1)
        if not words:
            continue
        tail = re.match(r"\s*,?\s+(?:(?:should|must|has\s+to|needs\s+to|to|will|shall)\s+)?"
                        r"(?:(?:appear|appears|occur|occurs|be\s+used|be\s+mentioned|be\s+included|"
                        r"show\s+up|shows\s+up|be\s+repeated|is\s+used)\s+)?(?:in\s+(?:your|the)\s+"
                        r"(?:entire\s+)?(?:response|answer|reply)\s+)?(?:" + TIMES + ")", t[end:],
                        re.I)
        if not tail:
            continue
        bm = re.search(TIMES, tail.group(0), re.I)
        flip = _negated(t, m.start())  # "do not use the word X more than 3 times"
        for rel, n in _bound_of(bm):
            rel = _flip(rel) if flip else rel
            out.append(Found(_c("keywords:frequency", keyword=words[0], frequency=n,
                                relation=rel), m.start(), end + tail.end()))
    return out


def _d_existence(d: _Doc) -> list[Found]:
    out = []
    t = d.text
    for m in _iter(r"\b(?:include[sd]?|including|use[sd]?|using|mention(?:s|ed|ing)?|"
                   r"contain(?:s|ed|ing)?|incorporat(?:e|es|ed|ing)|featur(?:e|es|ing)|add|with|"
                   r"hav(?:e|ing))\s+" + _DET + _KW_NOUN + r"\b", t):
        if _negated(t, m.start()):
            continue
        words, end = _word_list(t, m.end(), bare=_bare_ok(m.group("noun")))
        if words:
            out.append(Found(_c("keywords:existence", keywords=words), m.start(), end))
    return out


_SYMBOLS = {"exclamation": "!", "question mark": "?", "hashtag": "#", "hash": "#",
            "dollar sign": "$", "at sign": "@", "ampersand": "&", "percent sign": "%"}


def _d_letter(d: _Doc) -> list[Found]:
    out = []
    t = d.text
    for m in _iter(r"\bletter\s+(?:\"(?P<q1>[A-Za-z])\"|'(?P<q2>[A-Za-z])'|(?P<l>[A-Za-z]))(?!\w)",
                   t):
        letter = (m.group("q1") or m.group("q2") or m.group("l")).lower()
        _, b = d.sentence_at(m.start())
        bm = re.search(TIMES, t[m.end():min(b, m.end() + 80)], re.I)
        if bm:
            flip = _negated(t, m.start())  # "without using the letter e more than twice"
            for rel, n in _bound_of(bm):
                rel = _flip(rel) if flip else rel
                out.append(Found(_c("keywords:letter_frequency", letter=letter, let_frequency=n,
                                    let_relation=rel), m.start(), m.end() + bm.end()))
    names = "|".join(sorted(_SYMBOLS, key=len, reverse=True))
    for m in _iter(r"(?:" + BOUND + r")\s+(?P<sym>" + names + r")(?:\s+(?:marks?|points?|symbols?|"
                   r"signs?))?", t):
        sym = _SYMBOLS[re.sub(r"\s+", " ", m.group("sym").lower())]
        for rel, n in _bound_of(m):
            out.append(Found(_c("keywords:letter_frequency", letter=sym, let_frequency=n,
                                let_relation=rel), m.start(), m.end()))
    return out


def _d_length(d: _Doc) -> list[Found]:
    out = []
    t = d.text
    for m in _iter(r"(?:" + BOUND + r")\s+(?:(?:short|long|full|complete|english|total|"
                   r"separate)\s+)?(?P<unit>words?|sentences?)\b", t):
        unit = m.group("unit").lower()
        key, tid = (("num_words", "length_constraints:number_words") if unit.startswith("word")
                    else ("num_sentences", "length_constraints:number_sentences"))
        for rel, n in _bound_of(m):
            out.append(Found(_c(tid, **{key: n, "relation": rel}), m.start(), m.end()))
    for m in _iter(r"\bword\s+count\s+(?:of\s+|should\s+be\s+|must\s+be\s+|is\s+)?(?:" + BOUND
                   + ")", t):
        for rel, n in _bound_of(m):
            out.append(Found(_c("length_constraints:number_words", num_words=n, relation=rel),
                             m.start(), m.end()))
    for m in _iter(r"\bexactly\s+(?P<n>" + NUM + r")\s+sentences?\b", t):
        out.append(Found(_c("microworld:exact_sentences", num_sentences=parse_num(m.group("n"))),
                         m.start(), m.end()))
    return out


_SEP = r"(?<!\*)\*\*\*(?!\*)|\b(?:3|three)\s+asterisks?\b|\bmarkdown\s+divider"
_PARA_UNITS = r"paragraphs?|sections?|parts?|chunks?|blocks?|portions?"


def _d_paragraphs(d: _Doc, nth_found: bool, sections_found: bool) -> list[Found]:
    t = d.text
    seps = list(_iter(_SEP, t))
    if nth_found and not seps:
        return []
    cands = [m for m in _iter(r"(?<!at least )(?<!at most )\b(?:exactly\s+)?(?P<n>" + NUM +
                              r")[ \t]+(?:[a-z]+[ \t]+)?(?P<u>" + _PARA_UNITS + r")\b", t)]
    if seps:
        anchor = seps[0].start()
        cands.sort(key=lambda m: (not m.group("u").lower().startswith("paragraph"),
                                  abs(m.start() - anchor)))
        more = _mentions(_SEP + r"|\bparagraphs?\b|^\s*\*\*\*\s*$", t)
        if cands:
            m = cands[0]
            return [Found(_c("length_constraints:number_paragraphs",
                             num_paragraphs=parse_num(m.group("n"))), m.start(), m.end(), more)]
        lines = [ln.strip() for ln in t.split("\n")]
        if "***" in lines:  # an example layout: N dividers -> N+1 paragraphs
            return [Found(_c("length_constraints:number_paragraphs",
                             num_paragraphs=lines.count("***") + 1), seps[0].start(),
                          seps[0].end(), more)]
        return []
    if nth_found or sections_found:
        return []
    for m in cands:
        if m.group("u").lower().startswith("paragraph"):
            return [Found(_c("length_constraints:number_paragraphs",
                             num_paragraphs=parse_num(m.group("n"))), m.start(), m.end(),
                          _mentions(r"\bparagraphs?\b", t))]
    return []


_ORD = {w: i + 1 for i, w in enumerate(ORDINALS)}


def _d_nth_paragraph(d: _Doc) -> list[Found]:
    t = d.text
    out = []
    pat = (r"\b(?:the\s+)?(?P<ord>" + "|".join(ORDINALS) + r"|last|\d+(?:st|nd|rd|th))\s+"
           r"paragraph|\bparagraph\s+(?:number\s+|#\s*|no\.\s*)?(?P<num>" + NUM + r")")
    tail = (r"\s+(?:(?:must|should|has\s+to|needs\s+to|shall|will|is\s+to|to)\s+)?(?:always\s+)?"
            r"(?:start|begin)s?\s+with\s+(?:the\s+)?(?:word\s+)?(?:" + QUOTED +
            r"|(?P<bw>[A-Za-z][\w-]*))")
    counts = [(m.start(), parse_num(m.group("n"))) for m in
              _iter(r"\b(?P<n>" + NUM + r")\s+paragraphs\b", t)]
    for m in _iter("(?:" + pat + ")" + tail, t):
        word = (m.group("dq") or m.group("sq") or m.group("bw")).strip().lower()
        if not counts:
            continue
        num = min(counts, key=lambda c: abs(c[0] - m.start()))[1]
        o = (m.group("ord") or "").lower()
        nth = (num if o == "last" else _ORD.get(o) or int(re.sub(r"\D", "", o)) if o
               else parse_num(m.group("num")))
        out.append(Found(_c("length_constraints:nth_paragraph_first_word", num_paragraphs=num,
                            nth_paragraph=nth, first_word=word), m.start(), m.end(),
                         _mentions(r"\bparagraphs\b|new\s+lines?|line\s+breaks?", t)))
    return out


_SPLITTERS = r"SECTION|Section|section|PART|Part|part|CHAPTER|Chapter|chapter|DAY|Day|day|" \
             r"PARAGRAPH|Paragraph|paragraph|SLIDE|Slide|slide|STEP|Step|step|POINT|Point"


def _d_sections(d: _Doc) -> list[Found]:
    t = d.text
    m = re.search(r"\b(?P<s>" + _SPLITTERS + r")\s+(?:X|\{X\}|\[X\]|N|#)(?!\w)", t)
    if not m:
        return []
    nouns = {m.group("s").lower(), "section", "part"}
    counts = [(c.start(), parse_num(c.group("n")), c.end()) for c in
              _iter(r"\b(?P<n>" + NUM + r")[ \t]+(?:[a-z]+[ \t]+)?(?:" + "|".join(nouns) +
                    r")s\b", t)]
    if not counts:
        return []
    n = min(counts, key=lambda c: abs(c[0] - m.start()))[1]
    return [Found(_c("detectable_format:multiple_sections", section_spliter=m.group("s"),
                     num_sections=n), m.start(), m.end(),
                  tuple((c, e) for c, _, e in counts))]


def _d_placeholders(d: _Doc) -> list[Found]:
    t = d.text
    mentions = [m for m in _iter(r"\bplace[\s-]?holders?\b", t) if not _negated(t, m.start())]
    if not mentions:
        return []
    for m in mentions:
        a, _ = d.sentence_at(m.start())
        nm = re.search(r"(?:(?:at\s+least|a\s+minimum\s+of|minimum\s+of|no\s+less\s+than)\s+)?"
                       r"(?P<n>" + NUM + r")\s+(?:[\w-]+\s+){0,2}$", t[a:m.start()], re.I)
        if nm:
            return [Found(_c("detectable_content:number_placeholders",
                             num_placeholders=parse_num(nm.group("n"))), m.start(), m.end(),
                          tuple((x.start(), x.end()) for x in mentions))]
    if re.search(r"square\s+brackets|\[[^\]\n]{1,30}\]", t, re.I):
        m = mentions[0]
        return [Found(_c("detectable_content:number_placeholders", num_placeholders=1),
                      m.start(), m.end(), tuple((x.start(), x.end()) for x in mentions))]
    return []


def _d_postscript(d: _Doc) -> list[Found]:
    t = d.text
    m = re.search(r"\bpost[\s-]?script\b|\bP\.\s?P\.\s?S\b|\bP\.\s?S\.", t, re.I)
    if not m:
        return []
    mk = re.search(r"\b(?:start(?:ing|s)?|begin(?:ning|s)?)\s+with\s+(?:the\s+)?(?:marker\s+)?"
                   r"[\"']?(?P<m>P\.\s?P\.\s?S\.?|P\.\s?S\.?|[A-Za-z][\w.]*:?)",
                   t[m.start():m.start() + 200])
    marker = mk.group("m") if mk else "P.S."
    compact = re.sub(r"\s", "", marker).upper()
    if compact.startswith("P.P.S"):
        marker = "P.P.S"
    elif compact.startswith("P.S"):
        marker = "P.S."
    end = m.start() + (mk.end() if mk else m.end() - m.start())
    return [Found(_c("detectable_content:postscript", postscript_marker=marker), m.start(), end)]


def _d_bullets(d: _Doc) -> list[Found]:
    m = re.search(r"\b(?P<n>" + NUM + r")[ \t]+(?:(?:markdown|separate|distinct|different)[ \t]+)?"
                  r"(?:bullet(?:ed)?(?:\s*points?|\s+items?|\s+lists?|s)?)\b", d.text, re.I)
    if not m or _negated(d.text, m.start()):
        return []
    return [Found(_c("detectable_format:number_bullet_lists",
                     num_bullets=parse_num(m.group("n"))), m.start(), m.end(),
                  _mentions(r"\bbullet", d.text))]


def _d_constrained(d: _Doc) -> list[Found]:
    opts = list(_iter(r"my\s+answer\s+is\s+(?:yes|no|maybe)", d.text))
    if len({o.group(0).lower() for o in opts}) >= 2:
        head = re.search(r"one\s+of\s+the\s+following", d.text, re.I)
        start = head.start() if head and head.start() < opts[0].start() else opts[0].start()
        return [Found(_c("detectable_format:constrained_response"), start, opts[-1].end())]
    return []


def _d_highlights(d: _Doc) -> list[Found]:
    t = d.text
    for m in _iter(r"\b(?:highlight(?:ed|ing|s)?|itali[cs]i[sz](?:e|ed|es|ing)|bold(?:ed|face)?|"
                   r"emphasi[sz]e)\b", t):
        a, b = d.sentence_at(m.start())
        context = t[a:min(len(t), b + 150)]
        if not re.search(r"markdown|\*[^*\n]+\*|asterisk", context, re.I):
            continue
        if _negated(t, m.start()):
            continue
        seg = t[m.end():b]
        seg = seg[:seg.find("*")] if "*" in seg else seg
        nm = re.search(r"(?:at\s+least\s+|exactly\s+|a\s+minimum\s+of\s+)?\b(?P<n>" + NUM +
                       r")\b(?!\s*[.)%])", seg, re.I)
        if not nm:  # "at least 3 highlighted sections"
            nm = re.search(r"(?:at\s+least\s+|exactly\s+)(?P<n>" + NUM + r")[ \t]+$",
                           t[a:m.start()], re.I)
        n = parse_num(nm.group("n")) if nm else 1
        return [Found(_c("detectable_format:number_highlighted_sections", num_highlights=n),
                      m.start(), m.end())]
    return []


def _d_json(d: _Doc) -> list[Found]:
    t = d.text
    hits = []
    for m in _iter(r"\bjson\b(?:\s+(?:format|block|object|string|file|code))?", t):
        quote = t[m.start() - 1:m.start()] if m.start() else ""
        if quote and quote in "'\"" and t[m.start() + 4:m.start() + 5] == quote:
            continue  # the word JSON quoted as a keyword, not a format request
        if not _negated(t, m.start()):
            hits.append(m)
    if not hits:
        return []
    return [Found(_c("detectable_format:json_format"), hits[0].start(), hits[0].end(),
                  tuple((m.start(), m.end()) for m in hits[1:]))]


def _d_title(d: _Doc) -> list[Found]:
    m = re.search(r"<<[^<>\n]{1,80}>>|\bdouble\s+angul?ar\s+brackets?\b|\bdouble\s+angle\s+"
                  r"brackets?\b", d.text, re.I)
    return [Found(_c("detectable_format:title"), m.start(), m.end())] if m else []


def _d_two_responses(d: _Doc) -> list[Found]:
    m = re.search(r"(?<!\*)\*{6}(?!\*)|\b(?:6|six)\s+asterisks?\b|\b(?:two|2)\s+(?:different|"
                  r"distinct|separate)\s+(?:responses|answers)\b|\bgive\s+two\s+(?:responses|"
                  r"answers)\b", d.text, re.I)
    return [Found(_c("combination:two_responses"), m.start(), m.end())] if m else []


def _d_quotation(d: _Doc) -> list[Found]:
    for m in _iter(r"\bdouble[\s-]+quot(?:ation|ations|es|e)?(?:\s+marks?)?", d.text):
        a, b = d.sentence_at(m.start())
        s = d.text[a:b]
        if (re.search(r"\b(?:wrap\w*|enclos\w*|surround\w*|around|inside|within|put|place)\b",
                      s, re.I)
                and re.search(r"\b(?:response|answer|output|reply|whole|entire|everything)\b",
                              s, re.I)
                and not _negated(d.text, a + re.search(r"\w", s).start() + 1)):
            return [Found(_c("startend:quotation"), a, b)]
    return []


def _d_repeat(d: _Doc) -> list[Found]:
    t = d.text
    for m in _iter(r"\brepeat\b(?:[^.\n]{0,80}?)\b(?:request|question|prompt|sentence|"
                   r"instruction|query|above|word\s+for\s+word)", t):
        if _negated(t, m.start()):
            continue
        a, _ = d.sentence_at(m.start())
        prompt = t[:a].strip()
        if not prompt:
            continue
        end = t.find("\n", m.end())
        return [Found(_c("combination:repeat_prompt", prompt_to_repeat=prompt), a,
                      len(t) if end < 0 else end)]
    return []


_PHRASE_AFTER = re.compile(r"\s*(?::\s*)?(?:\"(?P<dq>[^\"\n]{1,200})\"|(?<![\w])'(?P<sq>"
                           r"[^'\n]{1,200})'(?!\w))")


def _d_end(d: _Doc) -> list[Found]:
    t = d.text
    pats = [
        r"\b(?:end|finish|conclude|close)\s+(?:(?:it|your|the|this|my|each|whole|entire|every)\s+)?"
        r"(?:[a-z]+\s+){0,2}?with\s+(?:(?:this|the|these|that|following|exact|exactly|same|"
        r"specific|EXACT)\s+)*(?:(?:phrase|sentence|words?|line|quote|text|question)\s*)?"
        r"(?:of\s+)?",
        r"\b(?:very\s+)?end\s+of\s+your\s+(?:entire\s+|whole\s+)?(?:response|answer|reply|output|"
        r"[a-z]+)\s+(?:should|must|has\s+to|needs\s+to)\s+(?:read|be)\s*(?:exactly\s*)?"
        r"(?:like|as)?\s*",
        r"\b(?:should|must|has\s+to|needs\s+to)\s+end\s+with\s+(?:the\s+)?(?:exact\s+)?"
        r"(?:(?:phrase|sentence|words?)\s*)?",
    ]
    for pat in pats:
        for m in _iter(pat, t):
            rest = t[m.end():]
            if re.match(r"\s*(?:a\s+|an\s+)?(?:post[\s-]?script|p\.\s?p?\.?\s?s)", rest, re.I):
                continue
            q = _PHRASE_AFTER.match(rest)
            if q:
                phrase, end = (q.group("dq") or q.group("sq")).strip(), m.end() + q.end()
            elif (re.search(r"(?:phrase|sentence|words?)\s*(?:of\s+)?$", m.group(0), re.I)
                  and not re.match(r"\s*:", rest)):
                # IFEval's own wording leaves the phrase unquoted: "... this exact phrase Any
                # other questions?. No other words should follow this phrase."
                u = re.match(r"\s*:?\s*(?P<p>[^\n]+?)(?:\.?\s+(?=(?:No|Do\s+not|Nothing)\s)|"
                             r"\.?\s*(?:\n|$))", rest)
                if not u:
                    continue
                phrase, end = u.group("p").strip(), m.end() + u.end("p")
            else:
                colon = re.match(r"\s*:\s*(?P<p>[^\n]+)", rest)
                if not colon:
                    continue
                phrase, end = colon.group("p").strip(), m.end() + colon.end()
            if phrase:
                return [Found(_c("startend:end_checker", end_phrase=phrase), m.start(), end)]
    return []


def _d_start_word(d: _Doc) -> list[Found]:
    m = re.search(r"\b(?:(?:start|begin)\s+(?:your|the)\s+(?:entire\s+|whole\s+)?(?:response|"
                  r"answer|reply|output)\s+with\s+the\s+word|(?:the\s+)?first\s+word\s+of\s+your\s+"
                  r"(?:entire\s+)?(?:response|answer|reply|output)\s+(?:should|must|has\s+to)\s+be|"
                  r"(?:your\s+)?(?:response|answer|reply)\s+(?:should|must)\s+(?:start|begin)\s+"
                  r"with\s+the\s+word)\s+(?:" + QUOTED + r"|(?P<bw>[A-Za-z][\w-]*))", d.text, re.I)
    if not m:
        return []
    word = (m.group("dq") or m.group("sq") or m.group("bw")).strip()
    return [Found(_c("microworld:start_word", first_word=word), m.start(), m.end())]


# Where two detectors claim overlapping text, the more specific one wins.
_BEATS = {
    "keywords:existence": {"keywords:frequency", "keywords:forbidden_words",
                           "startend:end_checker", "microworld:start_word",
                           "length_constraints:nth_paragraph_first_word",
                           "keywords:letter_frequency"},
    "keywords:forbidden_words": {"keywords:frequency"},
    "startend:end_checker": {"detectable_content:postscript"},
    # "at least 5 words written in capitals" is neither a length bound nor all-caps text
    "length_constraints:number_words": {"change_case:capital_word_frequency"},
    "change_case:english_capital": {"change_case:capital_word_frequency"},
}
# Types that may legitimately appear more than once (two bounds make a range).
_MULTI = {"length_constraints:number_words", "length_constraints:number_sentences",
          "change_case:capital_word_frequency", "keywords:frequency",
          "keywords:letter_frequency", "language:response_language"}
_MERGE = {"keywords:existence": "keywords", "keywords:forbidden_words": "forbidden_words"}


def _rkey(c: Constraint) -> str:
    rel = next((v for k, v in c.kwargs.items() if "relation" in k), None)
    subj = c.kwargs.get("keyword") or c.kwargs.get("letter") or ""
    return f"{c.id}|{rel}|{str(subj).lower()}"


def find_constraints(text: str, microworld: bool = True) -> list[Found]:
    """All recognised constraints with their character spans, in text order."""
    d = _Doc(text)
    found: list[Found] = []
    for det in (_d_no_comma, _d_capital_words, _d_capital_counted, _d_case, _d_language, _d_forbidden,
                _d_frequency, _d_existence, _d_letter, _d_length, _d_placeholders,
                _d_postscript, _d_bullets, _d_constrained, _d_highlights, _d_json, _d_title,
                _d_two_responses, _d_quotation, _d_repeat, _d_end):
        found += det(d)
    nth = _d_nth_paragraph(d)
    sections = _d_sections(d)
    found += nth + sections + _d_paragraphs(d, bool(nth), bool(sections))
    found += _d_start_word(d)
    # Resolve overlaps in favour of the more specific detector.
    kept = [f for f in found if not any(
        g.constraint.id in _BEATS.get(f.constraint.id, ()) and g.start < f.end
        and f.start < g.end for g in found)]
    # An end phrase is quoted text that may itself look like a constraint ("..., and no
    # commas."); ignore detections inside it.
    quoted = [(f.start, f.end) for f in kept if f.constraint.id == "startend:end_checker"]
    kept = [f for f in kept if f.constraint.id == "startend:end_checker" or not any(
        a < f.start and f.end <= b for a, b in quoted)]
    if not microworld:  # resolve overlaps first so microworld phrasings claim their text
        kept = [f for f in kept if not f.constraint.id.startswith("microworld:")]
    kept.sort(key=lambda f: f.start)
    out: list[Found] = []
    seen: set[str] = set()
    for f in kept:
        c = f.constraint
        key = c.key() if c.id in _MULTI else c.id
        if c.id == "language:response_language":
            key = c.id  # one response language per prompt
        if key in seen or (c.id in _MULTI and _rkey(c) in seen):
            i = next(i for i, g in enumerate(out) if g.constraint.id == c.id)
            out[i] = Found(out[i].constraint, out[i].start, out[i].end,
                           out[i].more + tuple(f.spans()))
            if c.id in _MERGE:  # several "include ..." / "do not use ..." mentions: one list
                i = next(i for i, g in enumerate(out) if g.constraint.id == c.id)
                arg = _MERGE[c.id]
                words = list(out[i].constraint.kwargs[arg])
                words += [w for w in c.kwargs[arg] if w.lower() not in {x.lower() for x in words}]
                out[i] = Found(_c(c.id, **{arg: words}), out[i].start, out[i].end, out[i].more)
            continue
        if c.id in _MULTI:
            seen.add(_rkey(c))  # keep the first "at least" and the first "less than" bound
        seen.add(key)
        out.append(f)
    return out


def rule_decompose(text: str, microworld: bool = True) -> list[Constraint]:
    """Typed constraints recognised in `text` (IFEval ids and argument names), in text order."""
    return [f.constraint for f in find_constraints(text, microworld=microworld)]


__all__ = ["BOUND", "NEG_BEFORE", "NUM", "QUOTED", "TIMES", "Found", "find_constraints",
           "parse_num", "rule_decompose", "sentence_spans"]
