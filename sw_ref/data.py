"""Penn Treebank loading for sw_ref (Mikolov split), at word or character level.

Public API
----------
``class DataError(ValueError)``
    Raised for every data problem (missing directory/file, empty file, undecodable or binary
    content, words of valid/test missing from the train vocabulary). The message is one line and
    names the offending file.

``resolve_data_dir(flag_value: str | os.PathLike | None) -> pathlib.Path``
    The data directory: ``flag_value`` if given, else the ``HWRNN_PTB`` environment variable, else
    ``DataError("no data: pass --data or set HWRNN_PTB")``. Existence is checked by ``load_ptb``.

``load_ptb(data_dir, level="word") -> Corpus``
    Reads ``ptb.train``, ``ptb.valid``, ``ptb.test`` from ``data_dir``, each as ``<name>.txt`` or
    ``<name>.txt.gz`` (plain ``.txt`` preferred when both exist), and tokenizes them at ``level``
    (``tokenize_text``). The vocabulary is built from train only, sorted (deterministic ids:
    ``vocab[i]`` is the token of id ``i``); a token of valid/test missing from it is a DataError.

``tokenize_text(text, level="word") -> list[str]``
    word (Mikolov convention): every line is split on whitespace and ``<eos>`` is appended (empty
    lines give just ``<eos>``).
    char (the character-level PTB derived from the same files, as Mikolov's char-level set and Ott
    et al.'s bits-per-character figures): every line's words (split on whitespace, so leading,
    trailing and repeated spaces vanish) are joined by the separator ``"_"`` (CHAR_SPACE) and each
    character is one token; ``<eos>`` (one token, as at word level) ends every line. ``<unk>`` and
    ``N`` stay their characters ('<', 'u', 'n', 'k', '>'). A text that already holds ``"_"`` is a
    DataError (the separator would be ambiguous; the PTB files hold none).
    Perplexity and cross-entropy are per token: per character at char level, where bits per
    character BPC = mean NLL per character / ln 2 = log2(perplexity per character) (``bpc``).

``class Corpus``: ``.vocab`` (list[str]), ``.word2idx`` (dict), ``.train/.valid/.test`` (1-D
    ``torch.long`` tensors of token ids), ``.paths`` (dict split -> Path actually read), ``.level``.

``check_level(level) -> str``: the level, or DataError (one line) for anything but word/char.

``batchify(data: Tensor[N], bsz: int) -> Tensor[N // bsz, bsz]``
    As in PyTorch's word_language_model example: trailing tokens that do not fill a column are
    dropped, column ``j`` is the ``j``-th contiguous chunk of the stream.

``get_batch(source, i, bptt) -> (data [T, B], target [T*B])`` with ``T = min(bptt, len-1-i)``.

``iter_bptt(source, bptt, start_batch=0) -> iterator of (batch_index, data, target)``
    Consecutive non-overlapping windows ``i = 0, bptt, 2*bptt, ...`` (from ``start_batch``).

``num_bptt_batches(source, bptt) -> int``: how many windows ``iter_bptt`` yields.
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

EOS = "<eos>"
SPLITS = ("train", "valid", "test")
ENV_VAR = "HWRNN_PTB"
#: tokenization levels (``load_ptb``); the default is word
LEVELS = ("word", "char")
DEFAULT_LEVEL = "word"
#: the character-level token of a space between words
CHAR_SPACE = "_"


class DataError(ValueError):
    """A data file or directory is missing or malformed (one-line message naming the file)."""


def resolve_data_dir(flag_value=None) -> Path:
    """``--data`` flag, else ``$HWRNN_PTB``, else DataError."""
    if flag_value is not None and str(flag_value) != "":
        return Path(flag_value)
    env = os.environ.get(ENV_VAR, "")
    if env:
        return Path(env)
    raise DataError(f"no data: pass --data or set {ENV_VAR}")


def check_level(level) -> str:
    """``level`` if it is one of LEVELS, else DataError (one line)."""
    if level not in LEVELS:
        raise DataError(f"level must be one of {LEVELS}, got {level!r}")
    return level


def bpc(nll_nats_per_token: float) -> float:
    """Bits per token (per character at char level): mean negative log-likelihood in nats / ln 2."""
    return nll_nats_per_token / math.log(2.0)


@dataclass
class Corpus:
    vocab: list
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    paths: dict = field(default_factory=dict)
    level: str = DEFAULT_LEVEL

    @property
    def word2idx(self) -> dict:
        return {w: i for i, w in enumerate(self.vocab)}

    def __repr__(self) -> str:  # keep it short (tensors are large)
        return (f"Corpus(level={self.level}, vocab={len(self.vocab)}, train={len(self.train)}, "
                f"valid={len(self.valid)}, test={len(self.test)})")


def _find_split_file(data_dir: Path, split: str) -> Path:
    plain = data_dir / f"ptb.{split}.txt"
    gz = data_dir / f"ptb.{split}.txt.gz"
    if plain.is_file():
        return plain
    if gz.is_file():
        return gz
    raise DataError(f"missing data file: {plain} (or {gz.name})")


def _read_text(path: Path) -> str:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read data file {path}: {exc}") from None
    if not raw.strip():
        raise DataError(f"data file {path} is empty")
    if b"\x00" in raw:
        raise DataError(f"data file {path} is not text (contains NUL bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"data file {path} is not UTF-8 text (byte {exc.start})") from None
    bad = [ch for ch in set(text) if ord(ch) < 32 and ch not in "\n\r\t\f\v"]
    if bad:
        raise DataError(f"data file {path} is not text (control character {ord(bad[0]):#04x})")
    return text


def tokenize_text(text: str, level: str = DEFAULT_LEVEL, source: str = "the text") -> list:
    """Tokens of a text at ``level`` (module docstring): word: whitespace split per line, ``<eos>``
    appended to every line; char: the line's words joined by ``"_"``, one token per character,
    ``<eos>`` appended to every line. ``source`` names the text in errors."""
    check_level(level)
    tokens = []
    if level == "char":
        if CHAR_SPACE in text:
            raise DataError(f"{source} holds {CHAR_SPACE!r}, the character-level space symbol (ambiguous)")
        for line in text.splitlines():
            tokens.extend(CHAR_SPACE.join(line.split()))
            tokens.append(EOS)
        return tokens
    for line in text.splitlines():
        tokens.extend(line.split())
        tokens.append(EOS)
    return tokens


def load_ptb(data_dir, level: str = DEFAULT_LEVEL) -> Corpus:
    check_level(level)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data directory not found: {data_dir}")
    paths = {s: _find_split_file(data_dir, s) for s in SPLITS}
    words = {s: tokenize_text(_read_text(p), level, f"data file {p}") for s, p in paths.items()}
    vocab = sorted(set(words["train"]))
    w2i = {w: i for i, w in enumerate(vocab)}
    tensors = {}
    for s in SPLITS:
        missing = sorted({w for w in words[s] if w not in w2i})
        if missing:
            shown = ", ".join(repr(w) for w in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            what = "character(s)" if level == "char" else "word(s)"
            raise DataError(f"data file {paths[s]} has {len(missing)} {what} not in the train "
                            f"vocabulary: {shown}{more}")
        tensors[s] = torch.tensor([w2i[w] for w in words[s]], dtype=torch.long)
    return Corpus(vocab=vocab, train=tensors["train"], valid=tensors["valid"],
                  test=tensors["test"], paths=paths, level=level)


def load_ptb_for(data_dir, level: str, vocab, owner) -> Corpus:
    """load_ptb, refused (DataError, one line) unless its vocabulary is ``vocab``, the one ``owner``
    (a checkpoint, run directory or shipped model, as named in the message) was trained on."""
    corpus = load_ptb(data_dir, level)
    if list(corpus.vocab) != list(vocab):
        raise DataError(f"the vocabulary of {owner} does not match the data in {data_dir}")
    return corpus


def batchify(data: torch.Tensor, bsz: int) -> torch.Tensor:
    """[N] -> [N // bsz, bsz]; column j holds the j-th contiguous chunk of the stream."""
    if bsz < 1:
        raise ValueError(f"batch size must be >= 1, got {bsz}")
    nbatch = data.size(0) // bsz
    if nbatch < 2:
        raise ValueError(f"too little data ({data.size(0)} tokens) for batch size {bsz}")
    data = data.narrow(0, 0, nbatch * bsz)
    return data.view(bsz, -1).t().contiguous()


def get_batch(source: torch.Tensor, i: int, bptt: int):
    seq_len = min(bptt, len(source) - 1 - i)
    data = source[i:i + seq_len]
    target = source[i + 1:i + 1 + seq_len].reshape(-1)
    return data, target


def num_bptt_batches(source: torch.Tensor, bptt: int) -> int:
    n = len(source) - 1
    return max(0, (n + bptt - 1) // bptt)


def iter_bptt(source: torch.Tensor, bptt: int, start_batch: int = 0):
    """Yield (batch_index, data [T, B], target [T*B]) over consecutive bptt windows."""
    if bptt < 1:
        raise ValueError(f"bptt must be >= 1, got {bptt}")
    for b, i in enumerate(range(0, len(source) - 1, bptt)):
        if b < start_batch:
            continue
        data, target = get_batch(source, i, bptt)
        yield b, data, target
