//! Token verification against hand-made tokens: each RFC 8725 pitfall once.

use super::*;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use cherga_api::auth::{KeyEntry, KeyFile};
use serde_json::{Value, json};

const NOW: i64 = 1_800_000_000;

fn policy() -> Policy {
    Policy { issuer: "cherga".into(), audience: "cherga".into(), leeway_s: 30 }
}

fn hs_entry(kid: &str, secret: &[u8]) -> KeyEntry {
    KeyEntry {
        kid: kid.into(),
        alg: "HS256".into(),
        public_key: None,
        private_key: None,
        secret: Some(STANDARD.encode(secret)),
    }
}

fn set(entries: Vec<KeyEntry>) -> KeySet {
    KeySet::from_file_contents(&KeyFile { keys: entries }).expect("key set")
}

fn new_token(scopes: &[&str]) -> NewToken {
    NewToken {
        subject: "billing".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        issuer: "cherga".into(),
        audience: "cherga".into(),
        now_s: NOW,
        ttl_s: 3600,
        jti: None,
    }
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// A token with any header and claims, signed with HMAC-SHA256 over `secret`.
fn hs_token(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let message = format!("{}.{}", b64(header), b64(claims));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let signature = ring::hmac::sign(&key, message.as_bytes());
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}

fn good_claims() -> Value {
    json!({"iss": "cherga", "aud": "cherga", "sub": "s", "exp": NOW + 60, "jti": "j1", "scope": "admin"})
}

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

#[test]
fn issued_tokens_verify_with_both_algorithms() {
    let keys = set(vec![generate(Alg::EdDSA, "ed").unwrap(), hs_entry("hs", SECRET)]);
    let verifier = Verifier::new(keys, policy());
    for kid in ["ed", "hs"] {
        let (token, claims) =
            issue(verifier.keys(), Some(kid), &new_token(&["produce:payments", "consume:*"])).unwrap();
        let principal = verifier.verify(&token, NOW + 10).unwrap_or_else(|e| panic!("{kid}: {e}"));
        assert_eq!(principal.jti, claims.jti.unwrap());
        assert_eq!(principal.subject.as_deref(), Some("billing"));
        assert_eq!(principal.expires_at, NOW + 3600);
        assert!(principal.scopes.allows(Access::Produce, "payments"));
        assert!(!principal.scopes.allows(Access::Produce, "other"));
        assert!(principal.scopes.allows(Access::Consume, "other"));
    }
    let err = issue(verifier.keys(), None, &new_token(&[])).unwrap_err();
    assert!(err.to_string().contains("choose one"), "{err}");
}

#[test]
fn times_issuer_audience_and_jti_are_checked() {
    let verifier = Verifier::new(set(vec![hs_entry("k", SECRET)]), policy());
    let header = json!({"alg": "HS256", "kid": "k", "typ": "JWT"});
    let with = |patch: Value| {
        let mut claims = good_claims();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        verifier.verify(&hs_token(&header, &claims, SECRET), NOW)
    };
    assert!(with(json!({})).is_ok());
    assert_eq!(with(json!({"exp": NOW - 31})).unwrap_err(), TokenError::Expired);
    assert!(with(json!({"exp": NOW - 29})).is_ok(), "within the leeway");
    assert_eq!(with(json!({"exp": null})).unwrap_err(), TokenError::MissingClaim("exp"));
    assert_eq!(with(json!({"nbf": NOW + 31})).unwrap_err(), TokenError::NotYetValid);
    assert!(with(json!({"nbf": NOW + 29})).is_ok(), "within the leeway");
    assert!(with(json!({"nbf": NOW - 5, "iat": NOW - 5})).is_ok());
    assert_eq!(with(json!({"iss": "someone-else"})).unwrap_err(), TokenError::WrongIssuer);
    assert_eq!(with(json!({"iss": null})).unwrap_err(), TokenError::MissingClaim("iss"));
    assert_eq!(with(json!({"aud": "other"})).unwrap_err(), TokenError::WrongAudience);
    assert!(with(json!({"aud": ["other", "cherga"]})).is_ok());
    assert_eq!(with(json!({"aud": null})).unwrap_err(), TokenError::MissingClaim("aud"));
    assert_eq!(with(json!({"jti": null})).unwrap_err(), TokenError::MissingClaim("jti"));
    assert_eq!(with(json!({"jti": ""})).unwrap_err(), TokenError::BadJti);
    assert_eq!(with(json!({"exp": "tomorrow"})).unwrap_err(), TokenError::Malformed);
    assert!(with(json!({"exp": (NOW + 60) as f64 + 0.5})).is_ok(), "NumericDate may have a fraction");
    let scopes = with(json!({"scope": ["produce:a", "consume:b"]})).unwrap().scopes;
    assert!(scopes.allows(Access::Produce, "a") && scopes.allows(Access::Consume, "b"));
}

#[test]
fn none_and_algorithm_confusion_are_refused() {
    let ed = generate(Alg::EdDSA, "ed").unwrap();
    let public = public_only(&KeyFile { keys: vec![ed.clone()] }).unwrap();
    let public_pem = public.keys[0].public_key.clone().unwrap();
    let verifier = Verifier::new(set(vec![ed, hs_entry("hs", SECRET)]), policy());
    let claims = good_claims();

    // alg none, with and without a signature part.
    for alg in ["none", "None", "NONE"] {
        let header = json!({"alg": alg, "kid": "hs"});
        let unsigned = format!("{}.{}.", b64(&header), b64(&claims));
        assert_eq!(verifier.verify(&unsigned, NOW).unwrap_err(), TokenError::Malformed, "{alg}");
        assert_eq!(verifier.verify(&unsigned[..unsigned.len() - 1], NOW).unwrap_err(), TokenError::Malformed);
    }
    // HS256 "signed" with the EdDSA public key as the secret: the key is EdDSA, so
    // HS256 is refused whatever the signature.
    for secret in [public_pem.as_bytes(), b"".as_slice()] {
        let forged = hs_token(&json!({"alg": "HS256", "kid": "ed"}), &claims, secret);
        assert_eq!(verifier.verify(&forged, NOW).unwrap_err(), TokenError::WrongAlgorithm);
    }
    // An EdDSA header on the HS256 key.
    let forged = hs_token(&json!({"alg": "EdDSA", "kid": "hs"}), &claims, SECRET);
    assert_eq!(verifier.verify(&forged, NOW).unwrap_err(), TokenError::WrongAlgorithm);
    // Algorithms cherga does not speak at all.
    for alg in ["RS256", "ES256", "HS512", "PS256"] {
        let forged = hs_token(&json!({"alg": alg, "kid": "hs"}), &claims, SECRET);
        assert_eq!(verifier.verify(&forged, NOW).unwrap_err(), TokenError::WrongAlgorithm, "{alg}");
    }
}

#[test]
fn wrong_keys_tampering_and_headers_are_refused() {
    let verifier = Verifier::new(set(vec![hs_entry("a", SECRET), hs_entry("b", &[9u8; 40])]), policy());
    let claims = good_claims();
    let good = hs_token(&json!({"alg": "HS256", "kid": "a"}), &claims, SECRET);
    assert!(verifier.verify(&good, NOW).is_ok());
    // Signed with another key than the one its kid names.
    let wrong = hs_token(&json!({"alg": "HS256", "kid": "b"}), &claims, SECRET);
    assert_eq!(verifier.verify(&wrong, NOW).unwrap_err(), TokenError::BadSignature);
    // Unknown kid; no kid with several keys.
    let unknown = hs_token(&json!({"alg": "HS256", "kid": "zzz"}), &claims, SECRET);
    assert_eq!(verifier.verify(&unknown, NOW).unwrap_err(), TokenError::UnknownKey);
    let no_kid = hs_token(&json!({"alg": "HS256"}), &claims, SECRET);
    assert_eq!(verifier.verify(&no_kid, NOW).unwrap_err(), TokenError::UnknownKey);
    // The payload changed after signing.
    let parts: Vec<&str> = good.split('.').collect();
    let mut admin = claims.clone();
    admin["sub"] = json!("mallory");
    let tampered = format!("{}.{}.{}", parts[0], b64(&admin), parts[2]);
    assert_eq!(verifier.verify(&tampered, NOW).unwrap_err(), TokenError::BadSignature);
    // crit and foreign typ.
    let crit = hs_token(&json!({"alg": "HS256", "kid": "a", "crit": ["b64"], "b64": false}), &claims, SECRET);
    assert_eq!(verifier.verify(&crit, NOW).unwrap_err(), TokenError::UnsupportedHeader);
    let typ = hs_token(&json!({"alg": "HS256", "kid": "a", "typ": "dpop+jwt"}), &claims, SECRET);
    assert_eq!(verifier.verify(&typ, NOW).unwrap_err(), TokenError::UnsupportedHeader);
    // Junk.
    for junk in ["", ".", "..", "a.b.c", "a.b", &"x".repeat(MAX_TOKEN_LEN + 1)] {
        assert!(verifier.verify(junk, NOW).is_err(), "{junk:?}");
    }
    // One key and no kid: that key.
    let single = Verifier::new(set(vec![hs_entry("only", SECRET)]), policy());
    assert!(single.verify(&no_kid, NOW).is_ok());
}

#[test]
fn rotation_two_kids_both_verify_until_one_is_removed() {
    let old = generate(Alg::EdDSA, "2026-01").unwrap();
    let new = generate(Alg::EdDSA, "2026-06").unwrap();
    let signer = set(vec![old.clone(), new.clone()]);
    let (old_token, _) = issue(&signer, Some("2026-01"), &new_token(&["admin"])).unwrap();
    let (new_token_text, _) = issue(&signer, Some("2026-06"), &new_token(&["admin"])).unwrap();
    let both = Verifier::new(set(vec![old, new.clone()]), policy());
    assert!(both.verify(&old_token, NOW).is_ok());
    assert!(both.verify(&new_token_text, NOW).is_ok());
    let only_new = Verifier::new(set(vec![new]), policy());
    assert_eq!(only_new.verify(&old_token, NOW).unwrap_err(), TokenError::UnknownKey);
    assert!(only_new.verify(&new_token_text, NOW).is_ok());
}

#[test]
fn a_scope_item_with_whitespace_makes_the_token_malformed() {
    let verifier = Verifier::new(set(vec![hs_entry("k", SECRET)]), policy());
    let header = json!({"alg": "HS256", "kid": "k", "typ": "JWT"});
    let with_scope = |scope: Value| {
        let mut claims = good_claims();
        claims["scope"] = scope;
        verifier.verify(&hs_token(&header, &claims, SECRET), NOW)
    };
    // The string form is space-separated by definition (RFC 8693).
    let scopes = with_scope(json!("produce:q1 consume:q2")).unwrap().scopes;
    assert!(scopes.allows(Access::Produce, "q1") && scopes.allows(Access::Consume, "q2"));
    // In the array form each item is one scope: one with whitespace inside is not
    // read as several (it granted admin when it was).
    for item in ["produce:q1 admin", "admin\tproduce:q1", " admin", "produce:q1\n"] {
        assert_eq!(with_scope(json!(["consume:x", item])).unwrap_err(), TokenError::Malformed, "{item:?}");
    }
    assert!(with_scope(json!(["produce:q1", "admin"])).unwrap().scopes.is_admin());
    // Nor can such a token be issued.
    for bad in ["produce:q1 admin", "", "admin "] {
        let err = issue(verifier.keys(), Some("k"), &new_token(&[bad])).unwrap_err();
        assert!(matches!(err, IssueError::BadScope(_)), "{bad:?}: {err}");
    }
}

#[test]
fn a_revocation_outlives_every_moment_its_token_is_accepted() {
    let verifier = Verifier::new(set(vec![hs_entry("k", SECRET)]), policy());
    let header = json!({"alg": "HS256", "kid": "k", "typ": "JWT"});
    let exp = NOW + 60;
    let token = hs_token(&header, &json!({"iss": "cherga", "aud": "cherga", "exp": exp, "jti": "j"}), SECRET);
    let kept_until_ms = revocation_expiry_ms(exp * 1000, policy().leeway_s);
    // The last millisecond the token is accepted, and the first it is not.
    let last_ms = (exp + policy().leeway_s) * 1000 - 1;
    assert!(verifier.verify(&token, last_ms.div_euclid(1000)).is_ok());
    assert_eq!(verifier.verify(&token, (last_ms + 1).div_euclid(1000)).unwrap_err(), TokenError::Expired);
    assert!(kept_until_ms > last_ms, "a revocation kept until {kept_until_ms} lapses while the token works");
    assert_eq!(kept_until_ms, last_ms + 1, "and it is kept no longer than needed");
    assert_eq!(revocation_expiry_ms(i64::MAX - 5, 30), i64::MAX);
}
