"""Agent identity: runtime attestation, identity tokens, session tokens and attenuation (docs/identity.md)."""
