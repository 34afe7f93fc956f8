"""Layer 2: building, loading and saving models, the adaptor contract, teacher and student kinds, the lazy teacher handle. Imports `core` and `config`."""
