"""Non-IID client partitions: LDA topics + Dirichlet(alpha) for text, and an IID split.

PTB has no article boundaries, so the training text is cut into pseudo-documents of
``doc_sentences`` consecutive sentences (default 20, about 440 tokens). A
scikit-learn ``LatentDirichletAllocation`` is fitted on their bag-of-words
(English stop words, ``N``, ``<unk>`` and ``<eos>`` removed) and every document gets
its dominant topic. Each client k draws a topic mixture q_k ~ Dirichlet(alpha * 1)
and fills its quota of documents by repeatedly drawing a topic from q_k (restricted
to topics with documents left) and taking the next unassigned document of that
topic. Every document goes to exactly one client; client sizes differ by at most
one document. Each client then splits its documents 80/20 into local train/test.
Small alpha -> each client holds one or two topics; large alpha -> close to IID.

Labelled data (images) uses the standard label-Dirichlet scheme instead (:func:`label_dirichlet_partition`,
:func:`build_label_partition`): for each class, client shares ~ Dirichlet(alpha) and that class's examples
are cut accordingly, resampled until every client holds at least ``min_size`` examples. Client sizes
then differ widely at small alpha. The same local train/test split follows.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedgen.core.errors import ConfigError
from fedgen.core.files import atomic_write_text

Sentence = list[str]
Document = list[Sentence]

_NON_WORDS = {"<unk>", "<eos>", "N", "$", "&", "'s", "n't", "'re", "'ve", "'ll", "'d", "'m"}


def make_documents(sentences: list[Sentence], doc_sentences: int) -> list[Document]:
    """Cut a sentence sequence into consecutive pseudo-documents (the last one may be shorter)."""
    return [sentences[i : i + doc_sentences] for i in range(0, len(sentences), doc_sentences)]


def fit_lda(docs: list[Document], num_topics: int, seed: int, max_iter: int = 20) -> tuple[np.ndarray, list]:
    """Fit LDA on the documents; return (doc-topic matrix [N, T], top-10 words per topic)."""
    from sklearn.decomposition import LatentDirichletAllocation
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

    stop = sorted(set(ENGLISH_STOP_WORDS) | _NON_WORDS)
    vec = CountVectorizer(
        tokenizer=str.split, token_pattern=None, lowercase=False, stop_words=stop, min_df=2, max_df=0.5
    )
    texts = [" ".join(" ".join(s) for s in d) for d in docs]
    counts = vec.fit_transform(texts)
    lda = LatentDirichletAllocation(
        n_components=num_topics, learning_method="batch", max_iter=max_iter, random_state=seed, n_jobs=1
    )
    doc_topic = lda.fit_transform(counts)
    words = vec.get_feature_names_out()
    top = [[str(words[j]) for j in np.argsort(-row)[:10]] for row in lda.components_]
    return doc_topic, top


def dirichlet_topic_partition(
    topics: np.ndarray, num_clients: int, alpha: float, seed: int
) -> list[list[int]]:
    """Assign documents (given their topic ids) to clients with Dirichlet(alpha) topic mixtures."""
    rng = np.random.default_rng(seed)
    num_topics = int(topics.max()) + 1 if len(topics) else 1
    pools = [list(rng.permutation(np.flatnonzero(topics == t))) for t in range(num_topics)]
    mixtures = rng.dirichlet(np.full(num_topics, alpha), size=num_clients)
    quota = np.full(num_clients, len(topics) // num_clients)
    quota[: len(topics) % num_clients] += 1
    clients: list[list[int]] = [[] for _ in range(num_clients)]
    order = rng.permutation(num_clients)
    while True:
        active = [k for k in order if len(clients[k]) < quota[k]]
        if not active:
            break
        for k in active:
            left = np.array([len(p) > 0 for p in pools], dtype=float)
            p = mixtures[k] * left
            if p.sum() <= 0:  # this client's topics are used up: take from what is left, by size
                p = np.array([len(pl) for pl in pools], dtype=float)
            t = rng.choice(num_topics, p=p / p.sum())
            clients[k].append(int(pools[t].pop()))
    return [sorted(c) for c in clients]


def iid_partition(num_docs: int, num_clients: int, seed: int) -> list[list[int]]:
    """Uniformly random, equal-size (+-1) split of documents across clients."""
    perm = np.random.default_rng(seed).permutation(num_docs)
    return [sorted(int(i) for i in part) for part in np.array_split(perm, num_clients)]


def train_test_split(doc_ids: list[int], test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Random local split of one client's documents (at least one train doc; test may be empty)."""
    ids = list(np.random.default_rng(seed).permutation(doc_ids))
    n_test = min(int(round(test_fraction * len(ids))), max(len(ids) - 1, 0))
    return sorted(int(i) for i in ids[n_test:]), sorted(int(i) for i in ids[:n_test])


def label_dirichlet_partition(
    labels: np.ndarray, num_clients: int, alpha: float, seed: int, min_size: int = 10, max_tries: int = 1000
) -> list[list[int]]:
    """Per class, split its examples over clients in proportions ~ Dirichlet(alpha); sorted index lists.

    The whole draw is repeated (same RNG stream, so deterministic for a seed) until every client holds at
    least ``min_size`` examples; after ``max_tries`` draws a :class:`ConfigError` says what to change.
    """
    labels = np.asarray(labels)
    if alpha <= 0 or num_clients < 1:
        raise ConfigError(
            f"label Dirichlet partition needs alpha > 0 and num_clients >= 1 (got {alpha}, {num_clients})"
        )
    if num_clients * min_size > len(labels):
        raise ConfigError(
            f"label Dirichlet partition: {num_clients} clients x min_size {min_size} needs at least "
            f"{num_clients * min_size} examples, only {len(labels)} given; lower num_clients or min_size"
        )
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(max_tries):
        clients: list[list[int]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            idx = rng.permutation(idx)
            cuts = (np.cumsum(rng.dirichlet(np.full(num_clients, alpha))) * len(idx)).astype(int)[:-1]
            for k, part in enumerate(np.split(idx, cuts)):
                clients[k].extend(int(i) for i in part)
        if min(map(len, clients)) >= min_size:
            return [sorted(c) for c in clients]
    raise ConfigError(
        f"label Dirichlet partition: no draw in {max_tries} gave all {num_clients} clients >= {min_size} "
        f"examples (alpha={alpha}, {len(labels)} examples); raise alpha, or lower num_clients or min_size"
    )


@dataclass
class ClientSplit:
    client_id: int
    train_docs: list[int]
    test_docs: list[int]


@dataclass
class Partition:
    """Which pseudo-documents each client holds, plus how it was made and its statistics."""

    scheme: str
    params: dict
    clients: list[ClientSplit]
    doc_topics: list[int]  # dominant LDA topic per document (all -1 for IID without LDA)
    topic_words: list[list[str]]
    stats: dict

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: str | Path) -> Partition:
        d = json.loads(Path(path).read_text())
        d["clients"] = [ClientSplit(**c) for c in d["clients"]]
        return cls(**d)


def _local_splits(assignment: list[list[int]], test_fraction: float, seed: int) -> list[ClientSplit]:
    """Each client's local train/test split (client k's split seed is ``seed * 100_003 + k``)."""
    return [
        ClientSplit(k, *train_test_split(ids, test_fraction, seed * 100_003 + k))
        for k, ids in enumerate(assignment)
    ]


def _composition(c: ClientSplit, doc_topics: list[int]) -> tuple[Counter, float]:
    """A client's topic/class counts (train + test) and the share of its most common one."""
    docs = c.train_docs + c.test_docs
    counts = Counter(doc_topics[d] for d in docs)
    return counts, (max(counts.values()) / len(docs) if docs else 0.0)


def partition_stats(clients: list[ClientSplit], doc_topics: list[int], doc_tokens: list[int]) -> dict:
    """Per-client docs/tokens and topic skew, with summary figures."""
    rows = []
    for c in clients:
        counts, top_share = _composition(c, doc_topics)
        rows.append(
            {
                "client": c.client_id,
                "docs_train": len(c.train_docs),
                "docs_test": len(c.test_docs),
                "tokens_train": int(sum(doc_tokens[d] for d in c.train_docs)),
                "tokens_test": int(sum(doc_tokens[d] for d in c.test_docs)),
                "dominant_topic_share": round(top_share, 4),
                "topics": {str(t): n for t, n in sorted(counts.items())},
            }
        )
    shares = np.array([r["dominant_topic_share"] for r in rows])
    toks = np.array([r["tokens_train"] for r in rows])
    return {
        "clients": rows,
        "summary": {
            "num_clients": len(rows),
            "num_docs": len(doc_topics),
            "dominant_topic_share_mean": float(shares.mean()),
            "dominant_topic_share_median": float(np.median(shares)),
            "tokens_train_min": int(toks.min()),
            "tokens_train_median": float(np.median(toks)),
            "tokens_train_max": int(toks.max()),
            "topic_sizes": {str(t): n for t, n in sorted(Counter(doc_topics).items())},
        },
    }


def build_partition(
    docs: list[Document],
    *,
    scheme: str,
    num_clients: int,
    alpha: float,
    num_topics: int,
    test_fraction: float,
    seed: int,
    lda_max_iter: int = 20,
) -> Partition:
    """Partition documents across clients (``scheme`` = "lda" or "iid") and split each 80/20."""
    if num_clients > len(docs):
        raise ConfigError(
            f"config data.num_clients: {num_clients} clients but only {len(docs)} documents; "
            "lower num_clients, doc_sentences, or raise data.max_docs"
        )
    doc_topic, top_words = fit_lda(docs, num_topics, seed, lda_max_iter)
    topics = doc_topic.argmax(1)
    if scheme == "lda":
        assignment = dirichlet_topic_partition(topics, num_clients, alpha, seed)
    elif scheme == "iid":
        assignment = iid_partition(len(docs), num_clients, seed)
    else:
        raise ValueError(f"unknown partition scheme {scheme!r}")
    clients = _local_splits(assignment, test_fraction, seed)
    doc_tokens = [sum(len(s) for s in d) for d in docs]
    topic_list = [int(t) for t in topics]
    return Partition(
        scheme=scheme,
        params={
            "num_clients": num_clients,
            "alpha": alpha,
            "num_topics": num_topics,
            "test_fraction": test_fraction,
            "seed": seed,
            "num_docs": len(docs),
        },
        clients=clients,
        doc_topics=topic_list,
        topic_words=top_words,
        stats=partition_stats(clients, topic_list, doc_tokens),
    )


def label_partition_stats(clients: list[ClientSplit], labels: list[int]) -> dict:
    """Per-client examples per class and class skew; summary incl. the classes-per-client histogram.

    ``num_classes`` counts every class a client holds at all (even one stray example); ``num_major_classes``
    only those with at least 5% of the client's examples.
    """
    rows: list[dict[str, Any]] = []
    for c in clients:
        counts, top_share = _composition(c, labels)
        rows.append(
            {
                "client": c.client_id,
                "examples_train": len(c.train_docs),
                "examples_test": len(c.test_docs),
                "dominant_class_share": round(top_share, 4),
                "num_classes": len(counts),
                "num_major_classes": sum(n >= 0.05 * max(counts.total(), 1) for n in counts.values()),
                "classes": {str(t): n for t, n in sorted(counts.items())},
            }
        )
    shares = np.array([r["dominant_class_share"] for r in rows])
    num_classes = np.array([r["num_classes"] for r in rows])
    sizes = np.array([r["examples_train"] + r["examples_test"] for r in rows])
    return {
        "clients": rows,
        "summary": {
            "num_clients": len(rows),
            "num_examples": len(labels),
            "dominant_class_share_mean": float(shares.mean()),
            "dominant_class_share_median": float(np.median(shares)),
            "classes_per_client_mean": float(num_classes.mean()),
            "classes_per_client_hist": {str(k): n for k, n in sorted(Counter(num_classes.tolist()).items())},
            "major_classes_per_client_mean": float(np.mean([r["num_major_classes"] for r in rows])),
            "examples_min": int(sizes.min()),
            "examples_median": float(np.median(sizes)),
            "examples_max": int(sizes.max()),
            "class_sizes": {str(t): n for t, n in sorted(Counter(labels).items())},
        },
    }


def build_label_partition(
    labels: np.ndarray,
    *,
    num_clients: int,
    alpha: float,
    test_fraction: float,
    seed: int,
    scheme: str = "dirichlet",
    min_size: int = 10,
    class_names: list[str] | None = None,
) -> Partition:
    """Partition labelled examples (``scheme`` = "dirichlet" or "iid") and split each client 80/20.

    Clients' ``train_docs``/``test_docs`` are positions in ``labels`` (for a client pool ``pool`` of a
    larger array, pass ``labels[pool]`` and map back with ``pool[ids]``); ``doc_topics`` are the labels.
    """
    labels = np.asarray(labels)
    if scheme == "dirichlet":
        assignment = label_dirichlet_partition(labels, num_clients, alpha, seed, min_size)
    elif scheme == "iid":
        if num_clients > len(labels):
            raise ConfigError(f"{num_clients} clients but only {len(labels)} examples; lower num_clients")
        assignment = iid_partition(len(labels), num_clients, seed)
    else:
        raise ValueError(f"unknown label partition scheme {scheme!r}")
    clients = _local_splits(assignment, test_fraction, seed)
    label_list = [int(y) for y in labels]
    return Partition(
        scheme=scheme,
        params={
            "num_clients": num_clients,
            "alpha": alpha,
            "test_fraction": test_fraction,
            "seed": seed,
            "num_examples": len(labels),
            "scheme": scheme,
            "min_size": min_size,
        },
        clients=clients,
        doc_topics=label_list,
        topic_words=[[name] for name in class_names] if class_names else [],
        stats=label_partition_stats(clients, label_list),
    )


def cached_partition(cache: Path, build, is_current=lambda part: True) -> Partition:
    """The partition cached at ``cache`` (if ``is_current``), else ``build()``, saved atomically."""
    if cache.is_file():
        part = Partition.load(cache)
        if is_current(part):
            return part
    part = build()
    cache.parent.mkdir(parents=True, exist_ok=True)
    part.save(cache)
    return part
