"""Public pre-training corpus, normalised to the conventions of the Mikolov Penn Treebank LM text.

The backbone is pre-trained on text that no federated client holds: the files under
``<data root>/pretrain/`` (see ``pretrain/SOURCES.md``), in three sources:

* ``gutenberg``: ``gutenberg/*.txt`` (NLTK Gutenberg selections; Latin-1; paragraphs = blank-line blocks),
* ``us-presidential-addresses``: ``{inaugural,state_union}/*.txt`` (Latin-1; one paragraph per line),
* ``wikitext-2-valid-test``: ``wiki.valid.tokens`` and ``wiki.test.tokens`` (UTF-8, already tokenised).

``README*`` files are skipped. Every file is checked against ``pretrain/SHA256SUMS`` before it is read.
On an online machine :func:`fedgen.data.corpus_fetch.fetch_pretrain` (``fedgen data fetch pretrain``)
downloads the folder from its pinned upstream commits (``PRETRAIN_MANIFEST``), byte-identical and checksummed.

Normalisation rules (:func:`normalise`), in order:

1. Line endings: CRLF / CR become LF. Curly quotes and apostrophes become ASCII ones.
2. WikiText only: heading lines (`` = Title = ``, `` = = Sub = = ``) are dropped; ``a @-@ b`` becomes the
   hyphenated word ``a-b``; ``1 @,@ 000`` and ``3 @.@ 5`` become ``1,000`` and ``3.5`` (then ``N``);
   ``do n 't``-style ``n 't`` is re-attached so that rule 6 treats it like running text.
3. Paragraphs: a blank line ends a paragraph (``prose`` style, single line breaks are spaces); in the
   ``lines`` and ``wikitext`` styles every line is a paragraph. A sentence never crosses a paragraph.
4. Sentences: a paragraph is split after ``.``, ``!``, ``?`` or ``;`` (plus any closing quotes or brackets)
   that is followed by whitespace. A period is not a sentence end, and stays part of its token, in
   abbreviations PTB spells with a period: dotted acronyms (``U.S.``, ``p.m.``), single capital initials
   other than ``I`` (``Harry S. Truman``) and the titles/short forms in :data:`ABBREVIATIONS`
   (``Mr.``, ``Mrs.``, ``Dr.``, ``St.``, ``Co.``, ``Inc.``, ``Jan.`` ... as written with a capital; ``No.``
   only before a digit).
5. Everything is lower-cased.
6. Clitics are split as in PTB: ``don't`` -> ``do n't``, ``can't`` -> ``ca n't``, ``it's`` -> ``it 's``
   and likewise ``'re``, ``'ve``, ``'d``, ``'m``, ``'ll``; ``cannot`` -> ``can not``; a possessive
   apostrophe after a plural ``s`` (``the lobsters' claws``) becomes the token ``'``.
7. Tokens: words are runs of letters/digits, joined internally by ``-``, ``&`` or ``'`` (``twenty-one``,
   ``at&t``, ``o'brien``); numbers are digit groups joined by ``,``, ``.`` or ``:`` (``1,000``, ``3.5``,
   ``1:1``) and become ``N``, as does ``%`` (PTB writes ``5 %`` as ``N N``); words that mix letters and
   digits (``1990s``, ``19th``) are kept. Of the symbols, ``$``, ``&`` and ``#`` are kept (they are PTB
   tokens); all other punctuation (``, . ; : ! ? " ( ) [ ] -- _`` ...) is dropped. ``<unk>`` is kept as is.
8. Sentences with fewer than 3 tokens are dropped (this removes most headings and speaker labels).

:func:`load_pretrain_corpus` then maps the sentences onto a vocabulary: a hyphenated word that is not in
the vocabulary is split at its hyphens (each part mapped on its own, numeric parts to ``N``), every other
out-of-vocabulary token becomes ``<unk>``, and ``<eos>`` ends each sentence.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fedgen.core.errors import DataError
from fedgen.data.checksums import check_sha256, read_sha256sums
from fedgen.data.ptb import EOS, UNK, Vocab, data_root

__all__ = [
    "ABBREVIATIONS",
    "PRETRAIN_SOURCES",
    "load_pretrain_corpus",
    "normalise",
    "pretrain_files",
]

#: Source folder -> (style for :func:`normalise`, encoding).
PRETRAIN_SOURCES: dict[str, tuple[str, str]] = {
    "gutenberg": ("prose", "latin-1"),
    "us-presidential-addresses": ("lines", "latin-1"),
    "wikitext-2-valid-test": ("wikitext", "utf-8"),
}

#: Capitalised short forms whose period is part of the token (all are PTB vocabulary entries).
ABBREVIATIONS: tuple[str, ...] = (
    "Mr",
    "Mrs",
    "Ms",
    "Messrs",
    "Dr",
    "Prof",
    "Rev",
    "Gen",
    "Gov",
    "Sen",
    "Sens",
    "Rep",
    "Col",
    "Adm",
    "Jr",
    "Sr",
    "St",
    "Co",
    "Cos",
    "Corp",
    "Inc",
    "Ltd",
    "Bros",
    "Cie",
    "Jan",
    "Feb",
    "Aug",
    "Sept",
    "Oct",
    "Nov",
    "Dec",
    "Vs",
    "vs",
    "Calif",
    "Mass",
    "Conn",
    "Mich",
    "Fla",
    "Ill",
    "Va",
    "Ariz",
    "Pa",
    "Ky",
    "Tenn",
    "Md",
    "Colo",
    "Ga",
    "Wash",
    "Ind",
    "Del",
    "Ore",
    "Neb",
    "Nev",
    "Wis",
    "Minn",
    "Ala",
    "Okla",
    "Kan",
    "Mo",
)

_STYLES = ("prose", "lines", "wikitext")
_CHUNK = 1 << 20
_DOT = "\x01"  # stands for a period that belongs to an abbreviation
_POSS = "\x02"  # stands for a possessive apostrophe token
_MIN_TOKENS = 3

_TRANSLATE = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        _DOT: " ",
        _POSS: " ",
    }
)

_WIKI_HEADING = re.compile(r"^[ \t]*=.*=[ \t]*$", re.M)
_WIKI_HYPHEN = re.compile(r" @-@ ")
_WIKI_NUM = re.compile(r" @([,.])@ ")
_WIKI_NT = re.compile(r"(?<=n) (?='t\b)", re.I)
_PARA_BREAK = re.compile(r"\n[ \t\f\v]*\n\s*")

_ACRONYM = re.compile(r"(?<![\w.])(?:[A-Za-z]\.){2,}")
_TITLES = re.compile(r"(?<![\w.])(" + "|".join(ABBREVIATIONS) + r")\.")
_NUMBER_ABBR = re.compile(r"(?<![\w.])(No)\.(?=\s*\d)")
_INITIAL = re.compile(r"(?<![\w.'])([A-HJ-Z])\.(?=\s)")

_SENT_END = re.compile(r"[.!?;][\"')\]]*\s+")

_NT = re.compile(r"(?<=[^\W_])n't(?![^\W_])")
_CLITIC = re.compile(r"(?<=[^\W_])'(s|re|ve|d|m|ll)(?![^\W_])")
_CANNOT = re.compile(r"\b(can)(not)\b")
_PLURAL_POSS = re.compile(r"(?<=s)'(?![^\W_])")
_WIKI_APOS = re.compile(r"(?<!\S)'(?!\S)")

_NUM = r"\d+(?:[.,:]\d+)*"
_PART = r"(?:\d+(?:[.,:]\d+)+|[^\W_]+)"
_TOKEN = re.compile(
    r"<unk>"
    rf"|(?:[^\W\d_]+{_DOT})+"  # abbreviations: mr. u.s. p.m.
    r"|n't|'(?:s|re|ve|d|m|ll)(?![^\W_])"  # clitics
    rf"|{_PART}(?:[-&']{_PART})*"  # words and numbers
    rf"|[$&#%{_POSS}]"
)
_IS_NUM = re.compile(_NUM)
_HAS_DIGIT = re.compile(r"\d")


def _protect(m: re.Match[str]) -> str:
    return m.group(0).replace(".", _DOT)


def _map_token(tok: str) -> str:
    if tok[0].isdigit() and _IS_NUM.fullmatch(tok):
        return "N"
    if tok == "%":
        return "N"
    if tok == _POSS:
        return "'"
    if _DOT in tok:
        return tok.replace(_DOT, ".")
    return tok


def normalise(text: str, style: str = "prose") -> list[list[str]]:
    """Turn raw text into PTB-style sentences (lists of tokens, no ``<eos>``); see the module docstring.

    ``style`` is ``"prose"`` (paragraphs are separated by blank lines), ``"lines"`` (every line is a
    paragraph) or ``"wikitext"`` (WikiText ``*.tokens`` files: every line is a paragraph, headings dropped).
    """
    if style not in _STYLES:
        raise ValueError(f"style must be one of {_STYLES}, not {style!r}")
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_TRANSLATE)
    if style == "wikitext":
        text = _WIKI_HEADING.sub("", text)
        text = _WIKI_HYPHEN.sub("-", text)
        text = _WIKI_NUM.sub(r"\1", text)
        text = _WIKI_NT.sub("", text)
        text = _WIKI_APOS.sub(_POSS, text)
    if style == "prose":
        text = _PARA_BREAK.sub("\x00", text).replace("\n", " ").replace("\x00", "\n")
    # Abbreviation periods are protected (case matters here, so before lower-casing).
    text = _ACRONYM.sub(_protect, text)
    text = _TITLES.sub(r"\1" + _DOT, text)
    text = _NUMBER_ABBR.sub(r"\1" + _DOT, text)
    text = _INITIAL.sub(r"\1" + _DOT, text)
    text = _SENT_END.sub("\n", text).lower()
    text = _CANNOT.sub(r"\1 \2", text)
    text = _NT.sub(" n't", text)
    text = _CLITIC.sub(r" '\1", text)
    text = _PLURAL_POSS.sub(" " + _POSS, text)
    sentences = []
    for line in text.split("\n"):
        toks = _TOKEN.findall(line)
        if len(toks) >= _MIN_TOKENS:
            sentences.append([_map_token(t) for t in toks])
    return sentences


def _pretrain_dir(root: str | Path | None) -> Path:
    return data_root(root) / "pretrain"


def _read_sums(folder: Path) -> dict[str, str]:
    sums_path = folder / "SHA256SUMS"
    if not sums_path.is_file():
        raise DataError(
            f"Pre-training corpus checksum list {sums_path} is missing. Set FEDGEN_DATA to a folder that "
            "holds pretrain/SHA256SUMS and the pretrain/ sources (see pretrain/SOURCES.md)."
        )
    return read_sha256sums(sums_path, "restore the original SHA256SUMS file.")


def pretrain_files(
    root: str | Path | None = None, sources: list[str] | None = None, verify: bool = True
) -> dict[str, list[Path]]:
    """Source -> sorted list of its text files, each checked against ``pretrain/SHA256SUMS`` if ``verify``."""
    folder = _pretrain_dir(root)
    sources = list(PRETRAIN_SOURCES) if sources is None else list(sources)
    unknown = [s for s in sources if s not in PRETRAIN_SOURCES]
    if unknown:
        raise DataError(f"Unknown pre-training source(s) {unknown}; choose from {sorted(PRETRAIN_SOURCES)}.")
    sums = _read_sums(folder) if verify else {}
    out: dict[str, list[Path]] = {}
    for source in sources:
        src_dir = folder / source
        if not src_dir.is_dir():
            raise DataError(
                f"Pre-training source folder {src_dir} is missing. Set FEDGEN_DATA to a folder that holds "
                f"pretrain/{source}/ (see pretrain/SOURCES.md), or leave {source!r} out of the sources."
            )
        if source == "wikitext-2-valid-test":
            files = [src_dir / "wiki.test.tokens", src_dir / "wiki.valid.tokens"]
            for f in files:
                if not f.is_file():
                    raise DataError(
                        f"Pre-training file {f} is missing; restore it (see pretrain/SOURCES.md)."
                    )
        elif source == "us-presidential-addresses":
            files = sorted(
                p
                for sub in ("inaugural", "state_union")
                for p in (src_dir / sub).glob("*.txt")
                if p.is_file()
            )
        else:
            files = sorted(
                p for p in src_dir.glob("*.txt") if p.is_file() and not p.name.startswith("README")
            )
        files = sorted(files)
        if not files:
            raise DataError(
                f"Pre-training source folder {src_dir} holds no text files; restore it (see SOURCES.md)."
            )
        if verify:
            listed = {rel for rel in sums if rel.startswith(source + "/") and "/README" not in "/" + rel}
            found = {p.relative_to(folder).as_posix() for p in files}
            for rel in sorted(listed - found):
                raise DataError(
                    f"Pre-training file {folder / rel} is missing; restore the pretrain/ folder "
                    "(see pretrain/SOURCES.md)."
                )
            for p in files:
                rel = p.relative_to(folder).as_posix()
                if rel not in sums:
                    raise DataError(
                        f"Pre-training file {p} is not listed in {folder / 'SHA256SUMS'}; remove it or "
                        "restore the original pretrain/ folder."
                    )
                check_sha256(
                    p, sums[rel], "Pre-training", "Restore the original file (see pretrain/SOURCES.md)."
                )
        out[source] = files
    return out


def load_pretrain_corpus(
    root: str | Path | None = None,
    vocab: Vocab | None = None,
    sources: list[str] | None = None,
    verify: bool = True,
) -> tuple[list[list[str]], dict[str, Any]]:
    """Normalised pre-training sentences mapped onto ``vocab``, each ending with ``<eos>``, plus statistics.

    Sentences come in sorted file order per source, sources in the given order (default: all three).
    Stats: ``sources`` -> {files, sentences, tokens, oov_tokens, unk_tokens, oov_rate, unk_rate}, and the
    same keys as totals. ``tokens`` includes ``<eos>``; the rates are over tokens excluding ``<eos>``.
    ``oov_rate`` is the fraction of tokens that were not in the vocabulary before mapping (after hyphen
    splitting); ``unk_rate`` also counts ``<unk>`` already present in the source (WikiText).
    """
    if vocab is None:
        raise TypeError("load_pretrain_corpus() needs vocab=..., e.g. load_ptb(root).vocab")
    files = pretrain_files(root, sources, verify=verify)
    stoi = vocab.stoi
    cache: dict[str, list[str]] = {}

    def split_oov(tok: str) -> list[str]:
        parts = cache.get(tok)
        if parts is None:
            parts = [p if not _IS_NUM.fullmatch(p) else "N" for p in tok.split("-") if p]
            cache[tok] = parts
        return parts

    sentences: list[list[str]] = []
    per_source: dict[str, dict[str, Any]] = {}
    for source, paths in files.items():
        style, encoding = PRETRAIN_SOURCES[source]
        n_sent = n_words = n_oov = n_unk = 0
        for path in paths:
            with open(path, encoding=encoding, newline="") as f:
                text = f.read()
            for sent in normalise(text, style):
                out: list[str] = []
                for tok in sent:
                    if tok in stoi:
                        out.append(tok)
                    elif "-" in tok:
                        out.extend(split_oov(tok))
                    else:
                        out.append(tok)
                mapped = []
                for tok in out:
                    if tok in stoi:
                        if tok == UNK:
                            n_unk += 1
                        mapped.append(tok)
                    else:
                        n_oov += 1
                        mapped.append(UNK)
                n_words += len(mapped)
                mapped.append(EOS)
                sentences.append(mapped)
                n_sent += 1
        per_source[source] = _stats(len(paths), n_sent, n_words, n_oov, n_unk)
    total_files, total_sents, total_words, total_oov = (
        sum(s[k] for s in per_source.values()) for k in ("files", "sentences", "words", "oov_tokens")
    )
    total_unk = sum(s["unk_tokens"] - s["oov_tokens"] for s in per_source.values())
    totals = _stats(total_files, total_sents, total_words, total_oov, total_unk)
    stats: dict[str, Any] = {"sources": per_source, **totals}
    return sentences, stats


def _stats(files: int, sentences: int, words: int, oov: int, unk_in_source: int) -> dict[str, Any]:
    return {
        "files": files,
        "sentences": sentences,
        "words": words,
        "tokens": words + sentences,
        "oov_tokens": oov,
        "unk_tokens": oov + unk_in_source,
        "oov_rate": oov / words if words else 0.0,
        "unk_rate": (oov + unk_in_source) / words if words else 0.0,
    }
