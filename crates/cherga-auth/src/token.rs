//! Verifying and issuing tokens.
//!
//! Verification follows RFC 8725: the key is chosen by `kid` (or is the only
//! key), the token's `alg` must be that key's algorithm, the signature is checked
//! before any claim is read, and then `exp` (required), `nbf`, `iss`, `aud` and
//! `jti` (required, so that every token can be revoked). A `crit` header is
//! refused: cherga understands no header extension. Time is a parameter.

use crate::keys::KeySet;
use crate::scope::Scopes;
use cherga_api::auth::{Audience, Claims, NumericDate, ScopeList};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Header, Validation};
use ring::rand::{SecureRandom, SystemRandom};

/// Longest token read: well above any real one, far below the header limit.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Longest `jti`.
pub const MAX_JTI_LEN: usize = 256;
/// The clock skew `cherga serve` allows on a token's `exp` and `nbf`, in seconds.
pub const LEEWAY_S: i64 = 30;

/// Why a token was refused. The messages are safe to show the caller: they say
/// what is wrong, never what the token holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the bearer token is not a well-formed JWT")]
    Malformed,
    #[error("the bearer token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    #[error("the bearer token names a key (kid) this server does not have")]
    UnknownKey,
    #[error("the bearer token's alg is not the algorithm of its key")]
    WrongAlgorithm,
    #[error("the bearer token's signature is not valid")]
    BadSignature,
    #[error("the bearer token has a crit header or a typ that is not JWT")]
    UnsupportedHeader,
    #[error("the bearer token has no {0} claim")]
    MissingClaim(&'static str),
    #[error("the bearer token has expired")]
    Expired,
    #[error("the bearer token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the bearer token was issued by another issuer")]
    WrongIssuer,
    #[error("the bearer token is meant for another audience")]
    WrongAudience,
    #[error("the bearer token's jti must be 1 to {MAX_JTI_LEN} printable characters")]
    BadJti,
}

/// What a verified token says about its bearer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub subject: Option<String>,
    pub jti: String,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: i64,
    pub scopes: Scopes,
}

/// What a token must say to be accepted, besides a good signature.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// One of the token's `aud` must be this.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_s: i64,
}

/// Checks tokens against a key set and a policy.
#[derive(Debug)]
pub struct Verifier {
    keys: KeySet,
    policy: Policy,
}

impl Verifier {
    pub fn new(keys: KeySet, policy: Policy) -> Self {
        crate::provider::install();
        Self { keys, policy }
    }

    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Verifies `token` at `now_s` (seconds since the Unix epoch).
    ///
    /// # Errors
    /// The first [`TokenError`] found, signature problems before claim problems.
    pub fn verify(&self, token: &str, now_s: i64) -> Result<Principal, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.crit.is_some() || !header.typ.as_deref().is_none_or(acceptable_typ) {
            return Err(TokenError::UnsupportedHeader);
        }
        let key = match header.kid.as_deref() {
            Some(kid) => self.keys.get(kid),
            None => self.keys.single(),
        }
        .ok_or(TokenError::UnknownKey)?;
        // Pinned: the key's algorithm, whatever the token says (RFC 8725 §3.1).
        if header.alg != key.alg().jwt() {
            return Err(TokenError::WrongAlgorithm);
        }
        let mut validation = Validation::new(key.alg().jwt());
        // Times, issuer and audience are checked below against `now_s`, so that
        // time is a parameter; the library checks the signature only.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let data =
            jsonwebtoken::decode::<Claims>(token, key.verifying(), &validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::InvalidSignature => TokenError::BadSignature,
                    ErrorKind::InvalidAlgorithm => TokenError::WrongAlgorithm,
                    _ => TokenError::Malformed,
                }
            })?;
        self.check_claims(data.claims, now_s)
    }

    fn check_claims(&self, claims: Claims, now_s: i64) -> Result<Principal, TokenError> {
        let leeway = self.policy.leeway_s;
        let exp = claims.exp.ok_or(TokenError::MissingClaim("exp"))?.0;
        if now_s >= exp.saturating_add(leeway) {
            return Err(TokenError::Expired);
        }
        if let Some(NumericDate(nbf)) = claims.nbf
            && now_s.saturating_add(leeway) < nbf
        {
            return Err(TokenError::NotYetValid);
        }
        match claims.iss.as_deref() {
            None => return Err(TokenError::MissingClaim("iss")),
            Some(iss) if iss != self.policy.issuer => return Err(TokenError::WrongIssuer),
            Some(_) => {}
        }
        if claims.aud.is_empty() {
            return Err(TokenError::MissingClaim("aud"));
        }
        if !claims.aud.0.contains(&self.policy.audience) {
            return Err(TokenError::WrongAudience);
        }
        let jti = claims.jti.ok_or(TokenError::MissingClaim("jti"))?;
        if jti.is_empty() || jti.chars().nth(MAX_JTI_LEN).is_some() || jti.chars().any(char::is_control) {
            return Err(TokenError::BadJti);
        }
        let scopes = Scopes::parse(claims.scope.0.iter().map(String::as_str));
        Ok(Principal { subject: claims.sub, jti, expires_at: exp, scopes })
    }
}

/// Until when the revocation of a token that expires at `exp_ms` (milliseconds
/// since the Unix epoch) must be kept, with `leeway_s` of clock skew allowed on
/// `exp`: the token is accepted until `exp` plus the leeway, so a revocation
/// forgotten at `exp` would let it work again for the rest of the leeway.
pub fn revocation_expiry_ms(exp_ms: i64, leeway_s: i64) -> i64 {
    exp_ms.saturating_add(leeway_s.saturating_mul(1000))
}

fn acceptable_typ(typ: &str) -> bool {
    typ.eq_ignore_ascii_case("JWT") || typ.eq_ignore_ascii_case("at+jwt")
}

/// Why a token could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("no key with kid {0:?} in the key file")]
    UnknownKey(String),
    #[error("key {0:?} has no private material (an EdDSA public key cannot sign)")]
    CannotSign(String),
    #[error("the key file has several keys; choose one with --kid ({0})")]
    ChooseKey(String),
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("the random source failed")]
    Random,
    #[error("scope {0:?} is empty or has whitespace inside: give each scope as an item of its own")]
    BadScope(String),
}

/// What to put in a new token.
#[derive(Clone, Debug)]
pub struct NewToken {
    pub subject: String,
    pub scopes: Vec<String>,
    pub issuer: String,
    pub audience: String,
    /// Seconds since the Unix epoch.
    pub now_s: i64,
    pub ttl_s: i64,
    /// `None`: a new random id.
    pub jti: Option<String>,
}

/// Signs a token with the key `kid` (or the only key of the set). Returns the
/// token and its claims.
///
/// # Errors
/// [`IssueError`] when the key is missing or cannot sign, or a scope is empty or
/// has whitespace inside (the claim joins scopes with spaces, so such an item
/// would be read back as several scopes).
pub fn issue(keys: &KeySet, kid: Option<&str>, new: &NewToken) -> Result<(String, Claims), IssueError> {
    crate::provider::install();
    if let Some(bad) = new.scopes.iter().find(|s| s.is_empty() || s.chars().any(char::is_whitespace)) {
        return Err(IssueError::BadScope(bad.clone()));
    }
    let kid = match kid {
        Some(kid) => kid.to_owned(),
        None => match keys.kids() {
            [only] => only.clone(),
            many => return Err(IssueError::ChooseKey(many.join(", "))),
        },
    };
    let key = keys.get(&kid).ok_or_else(|| IssueError::UnknownKey(kid.clone()))?;
    let signing = key.signing().ok_or_else(|| IssueError::CannotSign(kid.clone()))?;
    let jti = match &new.jti {
        Some(jti) => jti.clone(),
        None => new_jti()?,
    };
    let claims = Claims {
        iss: Some(new.issuer.clone()),
        sub: Some(new.subject.clone()),
        aud: Audience(vec![new.audience.clone()]),
        exp: Some(NumericDate(new.now_s.saturating_add(new.ttl_s))),
        nbf: Some(NumericDate(new.now_s)),
        iat: Some(NumericDate(new.now_s)),
        jti: Some(jti),
        scope: ScopeList(new.scopes.clone()),
    };
    let mut header = Header::new(key.alg().jwt());
    header.kid = Some(kid);
    let token =
        jsonwebtoken::encode(&header, &claims, signing).map_err(|e| IssueError::Signing(e.to_string()))?;
    Ok((token, claims))
}

/// A random token id: 128 bits from the system's random source, as hex.
///
/// # Errors
/// [`IssueError::Random`] when the random source fails.
pub fn new_jti() -> Result<String, IssueError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).map_err(|_| IssueError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
