//! JWT verification (placeholder until the verifier lands).
