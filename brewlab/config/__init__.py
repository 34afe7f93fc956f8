"""Layer 1: the typed schema (the only home of defaults), the fingerprint rules and the compose helper. Imports only `core`."""
