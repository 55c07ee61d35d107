"""Data: TinyShakespeare download/cache, tokenizers, batch sampling, the DataModule."""
