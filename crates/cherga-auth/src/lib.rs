//! Bearer tokens for cherga: the key file, signing and verifying JWTs, and the
//! per-queue scopes they carry.
//!
//! **Boundary:** no HTTP, no store, no clock: the server hands in the token text
//! and `now`, and gets back a [`Principal`] or a [`TokenError`]. Revocation is
//! the server's business (it asks the store), not this crate's.
//!
//! **Invariant:** only EdDSA (Ed25519) and HS256 exist here; the cryptography is
//! `ring`'s ([`provider`]), and every other algorithm, `none` included, is
//! refused before any signature is looked at.

mod keys;
mod provider;
pub mod scope;
mod token;

pub use keys::{Alg, Key, KeyError, KeySet, MIN_SECRET_BYTES, generate, public_only};
pub use scope::{Access, QueuePattern, Scopes};
pub use token::{
    IssueError, LEEWAY_S, MAX_JTI_LEN, MAX_TOKEN_LEN, NewToken, Policy, Principal, TokenError, Verifier,
    issue, new_jti, revocation_expiry_ms,
};

#[cfg(test)]
mod tests;
