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
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

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
        Path(path).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: str | Path) -> Partition:
        d = json.loads(Path(path).read_text())
        d["clients"] = [ClientSplit(**c) for c in d["clients"]]
        return cls(**d)


def partition_stats(clients: list[ClientSplit], doc_topics: list[int], doc_tokens: list[int]) -> dict:
    """Per-client docs/tokens and topic skew, with summary figures."""
    rows = []
    for c in clients:
        docs = c.train_docs + c.test_docs
        counts = Counter(doc_topics[d] for d in docs)
        top_share = max(counts.values()) / len(docs) if docs else 0.0
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
        from fedgen.errors import ConfigError

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
    clients = []
    for k, ids in enumerate(assignment):
        tr, te = train_test_split(ids, test_fraction, seed * 100_003 + k)
        clients.append(ClientSplit(k, tr, te))
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
