"""Client partitions: Dirichlet(alpha) over LDA topics (non-IID), IID, local 80/20 splits, persistence."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fedgen.core.errors import ConfigError
from fedgen.data.partition import (
    Partition,
    build_partition,
    dirichlet_topic_partition,
    iid_partition,
    make_documents,
    train_test_split,
)
from fedgen.data.ptb import load_ptb

SUMMARY_KEYS = {
    "num_clients",
    "num_docs",
    "dominant_topic_share_mean",
    "dominant_topic_share_median",
    "tokens_train_min",
    "tokens_train_median",
    "tokens_train_max",
    "topic_sizes",
}


def assert_disjoint_and_covering(parts: list[list[int]], num_docs: int) -> None:
    flat = [i for p in parts for i in p]
    assert len(flat) == len(set(flat)) == num_docs
    assert set(flat) == set(range(num_docs))


def assert_balanced(parts: list[list[int]]) -> None:
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1, sizes


def mean_dominant_share(parts: list[list[int]], labels) -> float:
    return float(np.mean([max(Counter(labels[i] for i in p).values()) / len(p) for p in parts]))


# ------------------------------------------------------------------------------------------------ Dirichlet


TOPICS = np.repeat(np.arange(10), 200)  # 2000 docs, 10 balanced topics
NUM_CLIENTS = 50


def test_dirichlet_partition_is_deterministic_for_a_seed() -> None:
    a = dirichlet_topic_partition(TOPICS, NUM_CLIENTS, 0.1, seed=3)
    assert a == dirichlet_topic_partition(TOPICS, NUM_CLIENTS, 0.1, seed=3)
    assert a != dirichlet_topic_partition(TOPICS, NUM_CLIENTS, 0.1, seed=4)


@pytest.mark.parametrize("alpha", [0.01, 0.1, 1.0, 100.0])
def test_dirichlet_partition_assigns_every_doc_exactly_once_in_balanced_clients(alpha: float) -> None:
    parts = dirichlet_topic_partition(TOPICS, NUM_CLIENTS, alpha, seed=0)
    assert len(parts) == NUM_CLIENTS
    assert_disjoint_and_covering(parts, len(TOPICS))
    assert_balanced(parts)


def test_dirichlet_partition_balances_uneven_counts_and_topics() -> None:
    topics = np.array([0] * 90 + [1] * 7 + [2] * 4)  # 101 docs, very unequal topics
    parts = dirichlet_topic_partition(topics, 7, 0.05, seed=1)
    assert_disjoint_and_covering(parts, 101)
    assert_balanced(parts)


def test_small_alpha_gives_much_more_topic_skew_than_large_alpha() -> None:
    skew = {
        alpha: float(
            np.mean(
                [
                    mean_dominant_share(dirichlet_topic_partition(TOPICS, NUM_CLIENTS, alpha, s), TOPICS)
                    for s in (0, 1, 2)
                ]
            )
        )
        for alpha in (0.05, 100.0)
    }
    print(f"\nmean dominant-topic share (2000 docs, 10 topics, 50 clients, seeds 0-2): {skew}")
    assert skew[0.05] > skew[100.0]
    assert skew[0.05] > 0.6
    assert skew[100.0] < 0.4


# ---------------------------------------------------------------------------------------------- IID / split


@pytest.mark.parametrize(("num_docs", "num_clients"), [(100, 10), (101, 7), (5, 5)])
def test_iid_partition_is_disjoint_covering_and_balanced(num_docs: int, num_clients: int) -> None:
    parts = iid_partition(num_docs, num_clients, seed=0)
    assert len(parts) == num_clients
    assert_disjoint_and_covering(parts, num_docs)
    assert_balanced(parts)
    assert parts == iid_partition(num_docs, num_clients, seed=0)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 10, 37])
def test_train_test_split_is_80_20_disjoint_deterministic_with_a_train_doc(n: int) -> None:
    ids = list(range(100, 100 + n))
    train, test = train_test_split(ids, 0.2, seed=9)
    assert (train, test) == train_test_split(ids, 0.2, seed=9)
    assert sorted(train + test) == ids
    assert not set(train) & set(test)
    assert len(train) >= 1
    assert abs(len(test) - 0.2 * n) <= 1 or len(train) == 1
    assert all(isinstance(i, int) for i in train + test)


def test_train_test_split_of_a_large_client_is_exactly_80_20() -> None:
    train, test = train_test_split(list(range(50)), 0.2, seed=0)
    assert (len(train), len(test)) == (40, 10)


def test_make_documents_chunks_consecutive_sentences() -> None:
    sentences = [[f"s{i}", "<eos>"] for i in range(7)]
    docs = make_documents(sentences, 3)
    assert docs == [sentences[0:3], sentences[3:6], sentences[6:7]]
    assert make_documents(sentences, 7) == [sentences]
    assert make_documents([], 3) == []


# ------------------------------------------------------------------------------------------ build_partition


def three_source_corpus(num_docs: int = 120) -> tuple[list, list[int]]:
    """Pseudo-documents of 10 sentences, each document drawn from one of 3 disjoint word lists."""
    rng = np.random.default_rng(0)
    words = [[f"{prefix}{i}" for i in range(100)] for prefix in ("fin", "spo", "med")]
    sentences, source = [], []
    for d in range(num_docs):
        s = d % 3
        sentences += [[str(w) for w in rng.choice(words[s], 8)] + ["<eos>"] for _ in range(10)]
        source.append(s)
    return make_documents(sentences, 10), source


@pytest.fixture(scope="module")
def synthetic() -> dict:
    docs, source = three_source_corpus()
    common = {"num_clients": 30, "num_topics": 3, "test_fraction": 0.2, "seed": 1, "lda_max_iter": 20}
    return {
        "docs": docs,
        "source": source,
        "lda": build_partition(docs, scheme="lda", alpha=0.05, **common),
        "iid": build_partition(docs, scheme="iid", alpha=0.05, **common),
    }


def client_docs(part: Partition) -> list[list[int]]:
    return [c.train_docs + c.test_docs for c in part.clients]


def test_lda_topics_recover_the_three_sources(synthetic: dict) -> None:
    pairs = set(zip(synthetic["source"], synthetic["lda"].doc_topics, strict=True))
    assert len(pairs) == 3
    assert {t for _, t in pairs} == {0, 1, 2}
    words = synthetic["lda"].topic_words
    assert len(words) == 3
    assert all(len({w[:3] for w in ws}) == 1 for ws in words)  # each topic's top words come from one list


def test_small_alpha_clients_mostly_hold_one_source(synthetic: dict) -> None:
    src = synthetic["source"]
    purity = {
        scheme: [max(Counter(src[i] for i in d).values()) / len(d) for d in client_docs(synthetic[scheme])]
        for scheme in ("lda", "iid")
    }
    mostly_one = {s: float(np.mean([p >= 0.75 for p in v])) for s, v in purity.items()}
    mean = {s: float(np.mean(v)) for s, v in purity.items()}
    print(
        f"\nsynthetic 3-source corpus, 30 clients: mean source purity {mean}, "
        f"share of clients >=75% {mostly_one}"
    )
    assert mostly_one["lda"] > 0.5
    assert mean["lda"] > 0.8
    assert mean["lda"] > mean["iid"] + 0.2


@pytest.mark.parametrize("scheme", ["lda", "iid"])
def test_build_partition_covers_every_doc_with_balanced_clients_and_consistent_stats(
    synthetic: dict, scheme: str
) -> None:
    part = synthetic[scheme]
    n = len(synthetic["docs"])
    assert part.scheme == scheme
    assert [c.client_id for c in part.clients] == list(range(30))
    assert_disjoint_and_covering(client_docs(part), n)
    assert_balanced(client_docs(part))
    assert all(len(c.train_docs) >= 1 for c in part.clients)
    summary = part.stats["summary"]
    assert set(summary) == SUMMARY_KEYS
    assert summary["num_clients"] == 30 and summary["num_docs"] == n
    assert sum(summary["topic_sizes"].values()) == n
    assert sum(r["docs_train"] + r["docs_test"] for r in part.stats["clients"]) == n
    assert sum(r["tokens_train"] + r["tokens_test"] for r in part.stats["clients"]) == n * 10 * 9


def test_partition_save_load_round_trip(synthetic: dict, tmp_path: Path) -> None:
    part = synthetic["lda"]
    part.save(tmp_path / "partition.json")
    assert Partition.load(tmp_path / "partition.json") == part


def test_more_clients_than_documents_raises_config_error(synthetic: dict) -> None:
    docs = synthetic["docs"][:5]
    with pytest.raises(ConfigError, match="num_clients"):
        build_partition(docs, scheme="lda", num_clients=6, alpha=0.1, num_topics=2, test_fraction=0.2, seed=0)


def test_unknown_scheme_raises(synthetic: dict) -> None:
    with pytest.raises(ValueError, match="scheme"):
        build_partition(
            synthetic["docs"],
            scheme="random",
            num_clients=3,
            alpha=0.1,
            num_topics=3,
            test_fraction=0.2,
            seed=0,
        )


# ------------------------------------------------------------------------------------------------ real data


@pytest.fixture(scope="module")
def real_docs(data_root: Path) -> list:
    return make_documents(load_ptb(data_root).train, 20)[:400]


def _real(docs: list, scheme: str) -> Partition:
    return build_partition(
        docs,
        scheme=scheme,
        num_clients=20,
        alpha=0.1,
        num_topics=5,
        test_fraction=0.2,
        seed=0,
        lda_max_iter=5,
    )


@pytest.mark.realdata
def test_real_ptb_lda_partition_is_deterministic_and_more_skewed_than_iid(real_docs: list) -> None:
    a, b, iid = _real(real_docs, "lda"), _real(real_docs, "lda"), _real(real_docs, "iid")
    assert a.clients == b.clients
    assert a.doc_topics == b.doc_topics
    assert_disjoint_and_covering(client_docs(a), 400)
    assert set(a.stats["summary"]) == SUMMARY_KEYS
    s_lda = a.stats["summary"]["dominant_topic_share_mean"]
    s_iid = iid.stats["summary"]["dominant_topic_share_mean"]
    print(
        f"\nPTB 400 docs, 20 clients, 5 topics: dominant-topic share "
        f"lda(alpha=0.1) {s_lda:.3f}, iid {s_iid:.3f}; "
        f"topic sizes {a.stats['summary']['topic_sizes']}"
    )
    for t, words in enumerate(a.topic_words):
        print(f"  topic {t}: {' '.join(words)}")
    assert s_lda > s_iid
