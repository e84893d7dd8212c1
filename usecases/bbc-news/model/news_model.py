"""The BBC news classifier without the training framework: corpus reading, Porter-stemmed token
counts over a vocabulary, the five-layer network and loading a trained checkpoint.

Training (`model_def.py`), evaluation (`evaluate.py`) and serving (`serve.py`) share this module
so an article is turned into features exactly the same way everywhere (the paper's predictor
"transforms the input the same way as during training"). It needs torch, numpy and nltk only:
no Determined, so a serving image stays small.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nltk.stem import PorterStemmer
from torch import nn

# Files the trial and the checkpoint hooks write next to state_dict.pth.
VOCAB_FILE = "vocab.json"
CLASS_NAMES_FILE = "class_names.json"
MODEL_CONFIG_FILE = "model_config.json"
STATE_FILE = "state_dict.pth"
ASSETS_KEY = "cdl_assets"  # the same assets inside state_dict.pth, so the checkpoint is self-contained

# A small English stop-word list (nltk's corpus would need a download; scikit-learn is not needed).
STOP_WORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it its
    itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own said same says she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were what
    when where which while who whom why will with would you your yours yourself yourselves mr mrs
    ms s t""".split()
)

_TOKEN = re.compile(r"[a-z]+")  # letters only; an apostrophe splits a word, as in scikit-learn


class TextVectorizer:
    """Lower-case, tokenise, drop stop words, Porter-stem, then count stems of a fixed vocabulary.

    Stemming is cached per word: an article repeats most of its words, and the corpus has far
    fewer distinct words than tokens, so the cache makes stemming cheap."""

    def __init__(self, vocab: Sequence[str] = ()) -> None:
        self._stemmer = PorterStemmer()
        self._stems: dict[str, str] = {}
        self.vocab: list[str] = list(vocab)
        self.index: dict[str, int] = {w: i for i, w in enumerate(self.vocab)}

    def tokens(self, text: str) -> list[str]:
        out: list[str] = []
        for word in _TOKEN.findall(text.lower()):
            if len(word) < 2 or word in STOP_WORDS:
                continue
            stem = self._stems.get(word)
            if stem is None:
                stem = self._stemmer.stem(word)
                self._stems[word] = stem
            out.append(stem)
        return out

    def fit(self, token_lists: Iterable[list[str]], vocab_size: int, min_df: int = 2) -> TextVectorizer:
        """Keep the `vocab_size` stems found in the most training documents (ties by name)."""
        df: Counter[str] = Counter()
        for toks in token_lists:
            df.update(set(toks))
        ranked = sorted((w for w, n in df.items() if n >= min_df), key=lambda w: (-df[w], w))
        self.vocab = ranked[:vocab_size]
        self.index = {w: i for i, w in enumerate(self.vocab)}
        return self

    def counts(self, token_lists: Sequence[list[str]]) -> np.ndarray:
        """Token counts, shape (documents, vocabulary), float32."""
        x = np.zeros((len(token_lists), len(self.vocab)), dtype=np.float32)
        for row, toks in enumerate(token_lists):
            for tok in toks:
                col = self.index.get(tok)
                if col is not None:
                    x[row, col] += 1.0
        return x

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        return self.counts([self.tokens(t) for t in texts])


def features(counts: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Model input from raw counts: log(1 + count) keeps long articles from dominating."""
    t = torch.as_tensor(counts, dtype=torch.float32)
    return torch.log1p(t)


class NewsNet(nn.Module):
    """Five linear layers with layer normalisation and dropout (the paper's network).

    `Linear(vocab, h)` with LayerNorm, ReLU and dropout; three hidden `Linear(h, h)` blocks, each
    LayerNorm -> Linear -> ReLU -> dropout added to its input (pre-norm residual); a final
    LayerNorm and `Linear(h, classes)` that starts at zero. The residual paths and the zero
    output layer make the untrained network a linear read-out of its first layer, so it learns
    within a few steps: on small corpora (the demo's 100 articles per category) and in a search's
    short first rungs, where a plain five-layer stack from random initialisation is still at
    chance. On the full corpus both reach the same accuracy."""

    def __init__(self, input_dim: int, hidden_size: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.input = nn.Sequential(
            nn.Linear(input_dim, hidden_size), nn.LayerNorm(hidden_size), nn.ReLU(), nn.Dropout(dropout)
        )
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, hidden_size), nn.ReLU(),
                          nn.Dropout(dropout))
            for _ in range(3)
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.output = nn.Linear(hidden_size, num_classes)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input(x)
        for block in self.blocks:
            h = h + block(h)
        return self.output(self.norm(h))


@dataclass
class ModelConfig:
    """What it takes to rebuild the network around saved weights."""

    input_dim: int
    hidden_size: int
    num_classes: int
    dropout: float
    input_transform: str = "log1p-count"
    tokenizer: str = "lowercase-stopwords-porter"
    architecture: str = "residual-5-linear-layernorm"

    def build(self) -> NewsNet:
        return NewsNet(self.input_dim, self.hidden_size, self.num_classes, self.dropout)


# --------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    """Articles and their labels, read from `<root>/<label>/<file>.txt` (paths relative to root)."""

    root: str = ""
    texts: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        return sorted(set(self.labels))


def read_text(path: Path) -> str:
    """UTF-8, falling back to Latin-1: the raw BBC archive has one Latin-1 file (a pound sign)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _holds_txt(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() == ".txt" for p in folder.iterdir())


def _label_root(data_dir: Path) -> Path:
    """The folder holding the label folders: `data_dir` itself, or the single folder below it
    whose sub-folders hold the articles (an archive unpacked with its top folder, `bbc/`)."""
    root = data_dir
    for _ in range(3):
        subdirs = _visible_dirs(root)
        if len(subdirs) == 1 and any(_holds_txt(d) for d in _visible_dirs(subdirs[0])):
            root = subdirs[0]
        else:
            break
    return root


def load_corpus(data_dir: str | Path) -> Corpus:
    """Every `.txt` file under a label folder (hidden files and other formats are skipped)."""
    base = Path(data_dir)
    if not base.is_dir():
        raise FileNotFoundError(f"data directory {base} does not exist")
    root = _label_root(base)
    corpus = Corpus(root=str(root))
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(label_dir.rglob("*")):
            if f.is_file() and f.suffix.lower() == ".txt" and not f.name.startswith("."):
                corpus.texts.append(read_text(f))
                corpus.labels.append(label_dir.name)
                corpus.paths.append(str(f.relative_to(root)))
    if not corpus.texts:
        raise ValueError(f"no <label>/*.txt files under {base}")
    return corpus


def stratified_split(labels: Sequence[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Reproducible per-class split: (train indices, validation indices)."""
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    for name in sorted(set(labels)):
        idx = np.array([i for i, lab in enumerate(labels) if lab == name])
        rng.shuffle(idx)
        n_val = int(round(len(idx) * fraction)) if len(idx) > 1 else 0
        val += idx[:n_val].tolist()
        train += idx[n_val:].tolist()
    return sorted(train), sorted(val)


# --------------------------------------------------------------------------- checkpoints


def find_checkpoint_dir(model_dir: str | Path) -> Path:
    """The Determined checkpoint folder inside an unpacked ModelVersion package (`checkpoint/`),
    or `model_dir` itself when it is a bare checkpoint."""
    base = Path(model_dir)
    for cand in (base / "checkpoint", base):
        if (cand / STATE_FILE).is_file():
            return cand
    raise FileNotFoundError(f"no {STATE_FILE} in {base} or {base / 'checkpoint'}")


def assets_dict(vectorizer: TextVectorizer, class_names: list[str], config: ModelConfig) -> dict[str, Any]:
    return {"vocab": vectorizer.vocab, "class_names": class_names, "model_config": config.__dict__}


def write_assets(ckpt_dir: str | Path, assets: dict[str, Any]) -> None:
    d = Path(ckpt_dir)
    (d / VOCAB_FILE).write_text(json.dumps(assets["vocab"]))
    (d / CLASS_NAMES_FILE).write_text(json.dumps(assets["class_names"]))
    (d / MODEL_CONFIG_FILE).write_text(json.dumps(assets["model_config"], indent=2))


@dataclass
class LoadedModel:
    net: NewsNet
    vectorizer: TextVectorizer
    class_names: list[str]
    config: ModelConfig

    @torch.no_grad()
    def logits(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        self.net.eval()
        outs = [
            self.net(features(self.vectorizer.transform(texts[i : i + batch_size])))
            for i in range(0, len(texts), batch_size)
        ]
        return torch.cat(outs) if outs else torch.zeros((0, len(self.class_names)))

    def predict(self, texts: Sequence[str]) -> list[str]:
        idx = self.logits(texts).argmax(dim=1).tolist()
        return [self.class_names[i] for i in idx]


def load_model(model_dir: str | Path) -> LoadedModel:
    """Rebuild the trained network and its vocabulary from a checkpoint (or a package holding one).

    The JSON assets are preferred; the copy inside state_dict.pth is the fallback."""
    ckpt = find_checkpoint_dir(model_dir)
    # Determined's checkpoint also holds optimizer and numpy RNG state, which the safe
    # weights-only unpickler refuses; it is our own trial's output, so a full load is fine.
    state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=False)
    embedded = state.get(ASSETS_KEY, {})

    def asset(file: str, key: str) -> Any:
        p = ckpt / file
        if p.is_file():
            return json.loads(p.read_text())
        if key in embedded:
            return embedded[key]
        raise FileNotFoundError(f"checkpoint {ckpt} has neither {file} nor {key} in {STATE_FILE}")

    config = ModelConfig(**asset(MODEL_CONFIG_FILE, "model_config"))
    net = config.build()
    net.load_state_dict(state["models_state_dict"][0])
    net.eval()
    return LoadedModel(net, TextVectorizer(asset(VOCAB_FILE, "vocab")), asset(CLASS_NAMES_FILE, "class_names"), config)


def macro_f1(labels: Sequence[str], predictions: Sequence[str]) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions
    (scikit-learn's default)."""
    classes = sorted(set(labels) | set(predictions))
    scores = []
    for c in classes:
        tp = sum(1 for y, p in zip(labels, predictions, strict=True) if y == c and p == c)
        fp = sum(1 for y, p in zip(labels, predictions, strict=True) if y != c and p == c)
        fn = sum(1 for y, p in zip(labels, predictions, strict=True) if y == c and p != c)
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return float(sum(scores) / len(scores)) if scores else 0.0
