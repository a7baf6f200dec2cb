"""A tiny learnable corpus in Mikolov's PTB layout, written by the tests themselves."""
import gzip
import random

DET = ["the", "a"]
ADJ = ["big", "small", "red"]
NOUN = ["cat", "dog", "bird", "fish"]
VERB = ["sees", "likes", "eats", "chases"]
PREP = ["near", "under"]


def sentence(r: random.Random) -> str:
    def np_():
        words = [r.choice(DET)]
        if r.random() < 0.4:
            words.append(r.choice(ADJ))
        words.append(r.choice(NOUN))
        return words
    s = np_() + [r.choice(VERB)] + np_()
    if r.random() < 0.3:
        s += [r.choice(PREP)] + np_()
    return " ".join(s)


def write_corpus(d, n_train=3000, n_eval=150, gz=False, seed=0):
    r = random.Random(seed)
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("valid", n_eval), ("test", n_eval)):
        text = "\n".join(" " + sentence(r) + " " for _ in range(n)) + "\n"
        if gz:
            with gzip.open(d / f"ptb.{split}.txt.gz", "wt") as fh:
                fh.write(text)
        else:
            (d / f"ptb.{split}.txt").write_text(text)
    return d
