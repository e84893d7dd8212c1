"""The BBC use case's data side and text features, without training: the generated corpus, the
download's unpacking, and the feature code shared by training, evaluation and serving."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from tests.usecase_helpers import load

USECASE = Path(__file__).resolve().parents[1]
CATEGORIES = ["business", "entertainment", "politics", "sport", "tech"]



generate = load("bbc_generate", USECASE / "data" / "generate.py")
download = load("bbc_download", USECASE / "data" / "download.py")


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- generated corpus


def test_generated_corpus_has_the_raw_archive_layout_and_three_invalid_files(tmp_path: Path) -> None:
    out = tmp_path / "bbc"
    generate.main(["--out", str(out), "--per-class", "12", "--seed", "3"])
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == CATEGORIES
    assert (out / "README.TXT").is_file()
    for category in CATEGORIES:
        names = sorted(p.name for p in (out / category).glob("*.txt"))
        assert names[:12] == [f"{i:03d}.txt" for i in range(1, 13)]
    # The invalid files the validate/clean steps must deal with.
    short = out / "business" / "013.txt"
    assert short.is_file() and len(short.read_text().strip()) < 100
    assert (out / "tech" / "013.html").is_file()
    not_utf8 = []
    for p in out.rglob("*.txt"):
        try:
            p.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            not_utf8.append(p)
    assert len(not_utf8) == 1 and not_utf8[0].parent.name == "sport"
    assert "\u00a3" in not_utf8[0].read_bytes().decode("latin-1")
    # Every other article looks like a BBC file: a title line, a blank line, long enough text.
    for p in (out / "politics").glob("*.txt"):
        title, blank, *body = p.read_text().split("\n")
        assert title and not blank and len(" ".join(body)) >= 150


def test_generated_corpus_is_deterministic_by_seed(tmp_path: Path) -> None:
    generate.generate(tmp_path / "a", per_class=5, seed=11)
    generate.generate(tmp_path / "b", per_class=5, seed=11)
    generate.generate(tmp_path / "c", per_class=5, seed=12)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")


def test_generated_corpus_without_invalid_files_is_all_clean_text(tmp_path: Path) -> None:
    counts = generate.generate(tmp_path / "clean", per_class=8, seed=1, invalid=False, readme=False)
    assert counts == {c: 8 for c in CATEGORIES}
    files = [p for p in (tmp_path / "clean").rglob("*") if p.is_file()]
    assert len(files) == 40 and all(p.suffix == ".txt" for p in files)
    assert all(len(p.read_bytes().decode("utf-8")) >= 150 for p in files)


def test_topics_are_told_apart_by_their_words_but_overlap(tmp_path: Path) -> None:
    """Each category's articles use its own vocabulary most, yet share words with the others,
    so the task is learnable without being a lookup."""
    generate.generate(tmp_path / "g", per_class=30, seed=5, invalid=False, readme=False)
    for category in CATEGORIES:
        words = " ".join(p.read_text().lower() for p in (tmp_path / "g" / category).glob("*.txt")).split()
        hits = {t: sum(1 for w in words if w.strip('.,"') in generate.TOPICS[t].nouns) for t in CATEGORIES}
        others = [n for t, n in hits.items() if t != category]
        assert hits[category] > 2 * max(others), (category, hits)
        assert min(others) > 0, (category, hits)


# --------------------------------------------------------------------------- download


def _archive(tmp_path: Path) -> Path:
    """A zip shaped like bbc-fulltext.zip (top folder `bbc/`), plus entries a safe unpacker skips."""
    corpus = tmp_path / "corpus"
    generate.generate(corpus, per_class=4, seed=9)
    archive = tmp_path / "bbc-fulltext.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(corpus.rglob("*")):
            if p.is_file():
                zf.write(p, f"bbc/{p.relative_to(corpus).as_posix()}")
        zf.writestr("bbc/../escaped.txt", "outside the target folder")
        zf.writestr("__MACOSX/bbc/._README.TXT", "resource fork")
    return archive


def test_download_unpacks_the_archive_into_the_pipeline_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = _archive(tmp_path)
    out = tmp_path / "data" / "bbc"
    download.main(["--out", str(out), "--url", archive.as_uri()])
    assert tree_digest(out) == tree_digest(tmp_path / "corpus")  # bbc/ dropped, bytes unchanged
    assert not (tmp_path / "data" / "escaped.txt").exists() and not (out / "__MACOSX").exists()
    assert "unpacked 21 articles" in capsys.readouterr().out  # 20 + the too-short one (.html is not counted)


def test_download_refuses_an_archive_that_is_not_the_bbc_corpus(tmp_path: Path) -> None:
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("data/notes.txt", "hello")
    with pytest.raises(ValueError, match="no articles for business"):
        download.download(tmp_path / "out", archive.as_uri())


def test_download_default_address_is_the_official_archive() -> None:
    assert download.BBC_URL == "http://mlg.ucd.ie/files/datasets/bbc-fulltext.zip"


# --------------------------------------------------------------------------- features


@pytest.fixture(scope="module")
def news_model() -> ModuleType:
    return load("news_model", USECASE / "model" / "news_model.py")


def test_tokens_are_lowercased_stemmed_and_free_of_stop_words(news_model: ModuleType) -> None:
    v = news_model.TextVectorizer()
    assert v.tokens("The Companies were RUNNING profitable businesses, and it's said they'd grow.") == [
        "compani", "run", "profit", "busi", "grow"]


def test_vocabulary_comes_from_document_frequency_and_counts_ignore_unknown_words(news_model: ModuleType) -> None:
    v = news_model.TextVectorizer()
    docs = ["goal goal match", "match election", "election vote", "match goal"]
    v.fit([v.tokens(d) for d in docs], vocab_size=3)
    assert v.vocab == ["match", "elect", "goal"]  # by document frequency, then by name; "vote" is too rare
    x = v.transform(["Goals, goals and another match in the election; a vote"])
    assert x.tolist() == [[1.0, 1.0, 2.0]]


def test_stratified_split_is_reproducible_and_keeps_class_shares(news_model: ModuleType) -> None:
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    train, val = news_model.stratified_split(labels, 0.2, seed=4)
    assert (train, val) == news_model.stratified_split(labels, 0.2, seed=4)
    assert val != news_model.stratified_split(labels, 0.2, seed=5)[1]
    assert sorted(train + val) == list(range(100))
    assert [sum(1 for i in val if labels[i] == c) for c in "abc"] == [10, 6, 4]


def test_macro_f1_averages_per_class_scores(news_model: ModuleType) -> None:
    assert news_model.macro_f1(["a", "a", "b", "b"], ["a", "a", "b", "b"]) == 1.0
    # a: tp 1 fp 0 fn 1 -> 2/3; b: tp 2 fp 1 fn 0 -> 4/5
    assert news_model.macro_f1(["a", "a", "b", "b"], ["a", "b", "b", "b"]) == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_corpus_reader_finds_label_folders_below_a_top_folder_and_repairs_latin1(
    news_model: ModuleType, tmp_path: Path
) -> None:
    generate.generate(tmp_path / "bbc", per_class=3, seed=2)  # includes the Latin-1 and the .html file
    corpus = news_model.load_corpus(tmp_path)  # the archive's top folder is found by itself
    assert corpus.class_names == CATEGORIES
    assert len(corpus.texts) == 3 * 5 + 1  # the too-short .txt is read (cleaning is the pipeline's job)
    assert not any(p.endswith(".html") or p == "README.TXT" for p in corpus.paths)
    assert any("\u00a3" in t for t in corpus.texts)
    with pytest.raises(ValueError, match="no <label>/\\*.txt files"):
        news_model.load_corpus(tmp_path / "bbc" / "business")
