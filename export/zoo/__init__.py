"""The model zoo: the published speech-emotion systems the project reimplements, each
trained into a model folder on the same fused-graph contract as EmoTech (``runtime.spec``),
so the runtime, CLI, server and benchmarks run every one of them unchanged.

- ``features``: utterance-level acoustic statistics and bag-of-WordPiece text features as
  torch modules, exported into the graph;
- ``graph``: the fused ONNX graph of a scikit-learn system (features, skl2onnx classifiers,
  late fusion) and its parity checks;
- ``train_sklearn``: ``python -m export.zoo.train_sklearn --system lr|rf|svm --out DIR``;
- ``cnn1d``, ``minilm``, ``train_cnn1d``: the 1-D CNN + MiniLM system with weighted late fusion
  (``python -m export.zoo.train_cnn1d --out DIR``);
- ``compare``: the comparison table of ``docs/model-zoo.md``; ``weight_sweep``: a late-fusion
  folder's paired accuracy over its audio weight.
"""
