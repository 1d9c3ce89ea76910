//! Bearer tokens and key files. Arbitrary text as a token; arbitrary JSON as the
//! claims of a correctly signed token (so the claim checks, not only the
//! signature check, see hostile input); arbitrary text as a key file.

#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cherga_api::auth::{KeyEntry, KeyFile};
use cherga_auth::{KeySet, Policy, Verifier};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const SECRET: &[u8] = b"fuzzing-secret-fuzzing-secret-32";
const NOW: i64 = 1_800_000_000;

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let hs = KeyEntry {
            kid: "hs".into(),
            alg: "HS256".into(),
            public_key: None,
            private_key: None,
            secret: Some(base64::engine::general_purpose::STANDARD.encode(SECRET)),
        };
        let ed = cherga_auth::generate(cherga_auth::Alg::EdDSA, "ed").expect("key");
        let keys = KeySet::from_file_contents(&KeyFile { keys: vec![hs, ed] }).expect("keys");
        Verifier::new(keys, Policy { issuer: "cherga".into(), audience: "cherga".into(), leeway_s: 30 })
    })
}

fn hs256(message: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
    URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, message.as_bytes()).as_ref())
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    match which % 4 {
        // Any text as a token.
        0 => {
            let _ = verifier().verify(text, NOW);
        }
        // Any header and claims, signed with the right key.
        1 => {
            let (header, claims) = text.split_once('\n').unwrap_or((r#"{"alg":"HS256","kid":"hs"}"#, text));
            let message = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
            let token = format!("{message}.{}", hs256(&message));
            if let Ok(principal) = verifier().verify(&token, NOW) {
                // Accepted: then it really was an HS256 token for us, in time.
                let value: serde_json::Value =
                    serde_json::from_str(claims).expect("accepted claims are JSON");
                assert_eq!(value["iss"], "cherga");
                assert!(principal.expires_at + 30 > NOW);
                assert!(!principal.jti.is_empty());
            }
        }
        // Any text as a key file: refused or read, never a panic.
        2 => {
            let _ = KeySet::from_json(text);
        }
        // Any text as the claims of a token, unverified (what `cherga token revoke` reads).
        _ => {
            let _ = serde_json::from_str::<cherga_api::auth::Claims>(text);
        }
    }
});
