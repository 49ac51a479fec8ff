"""Data: corpora from any source (`corpus`), SentencePiece (`tokenizer`), token-budget batches
(`batching`). Knows nothing of the model."""
