"""Server-side cryptography: authority proofs (signing side)."""
