"""The deploy pipeline, on top of every other stage: train → export → validate → gate → upload (with the item
table) → build the embedding generation → check it → promote. ``registry`` below it only stores and switches
versions."""
