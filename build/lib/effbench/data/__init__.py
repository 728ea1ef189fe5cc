from effbench.data.corpus import Corpus, load_corpus

__all__ = ["Corpus", "load_corpus"]
