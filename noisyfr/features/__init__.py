"""Face embeddings from pretrained models: ``noisyfr features`` (docs/features.md).

``models.py`` the models (dlib, noisyfr checkpoints and insightface weights, ONNX) with their
preprocessing; ``extract.py`` the sources, the cache of finished chunks and the feature file;
``verify.py`` a pairs set's own verification; ``cli.py`` the command.
"""
