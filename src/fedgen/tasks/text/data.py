"""The text task's data: PTB train as pseudo-documents, their client partition, client datasets."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fedgen.data.partition import Partition, build_partition, cached_partition, make_documents
from fedgen.data.ptb import PTB
from fedgen.tasks.base import ClientData
from fedgen.tasks.text.lm import LMObjective, TextStream

if TYPE_CHECKING:
    from fedgen.config import Config


def ptb_documents(cfg: Config, ptb: PTB) -> tuple[list, list]:
    """PTB train as pseudo-documents: (public slice no client holds, the clients' documents)."""
    d = cfg.data
    docs = make_documents(ptb.train, d.doc_sentences)
    public, docs = docs[: d.public_docs], docs[d.public_docs :]
    if d.max_docs is not None:
        docs = docs[: d.max_docs]
    return public, docs


def load_partition(cfg: Config, ptb: PTB) -> tuple[list, Partition]:
    """The clients' pseudo-documents of PTB train and their partition (cached by its parameters)."""
    d = cfg.data
    _, docs = ptb_documents(cfg, ptb)
    cache = Path(cfg.output.root) / "cache" / f"partition-{d.partition}-{cfg.digest('seed', 'data')}.json"

    def build() -> Partition:
        return build_partition(
            docs,
            scheme=d.partition,
            num_clients=d.num_clients,
            alpha=d.alpha,
            num_topics=d.num_topics,
            test_fraction=d.test_fraction,
            seed=cfg.seed,
            lda_max_iter=d.lda_max_iter,
        )

    return docs, cached_partition(cache, build, lambda part: part.params.get("num_docs") == len(docs))


def client_datasets(lm: LMObjective, docs: list, part: Partition) -> dict[int, ClientData]:
    """Each client's training windows (its train documents) and test stream (its test documents)."""

    def stream(ids: list[int]) -> TextStream:
        return lm.stream([s for i in ids for s in docs[i]])

    return {
        c.client_id: ClientData(c.client_id, lm.examples(stream(c.train_docs)), stream(c.test_docs))
        for c in part.clients
    }


def head_sentences(sentences: list[list[str]], max_words: int | None) -> list[list[str]]:
    """The first sentences holding at least ``max_words`` words (``<eos>`` included); all if None."""
    if max_words is None:
        return sentences
    out, words = [], 0
    for s in sentences:
        if words >= max_words:
            break
        out.append(s)
        words += len(s)
    return out
