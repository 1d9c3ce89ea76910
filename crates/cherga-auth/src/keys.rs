//! Keys: the key file read into verifying (and, where the file has private
//! material, signing) keys, one per `kid`; and new keys made from the system's
//! random source.
//!
//! **Invariant:** each key has exactly one algorithm, fixed by the file. A token
//! is checked only with the key its `kid` names and only with that key's
//! algorithm (RFC 8725 §3.1), so `alg` in a token can never choose how it is
//! verified.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cherga_api::auth::{KeyEntry, KeyFile};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::Ed25519KeyPair;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use std::collections::HashMap;
use std::path::Path;

/// Shortest HS256 secret: the hash size (RFC 7518 §3.2).
pub const MIN_SECRET_BYTES: usize = 32;
/// Longest `kid`.
const MAX_KID_LEN: usize = 128;
/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): the 32-byte key follows.
const ED25519_SPKI_PREFIX: [u8; 12] =
    [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// The algorithms cherga accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    /// Ed25519 signatures: the server needs only the public key.
    EdDSA,
    /// HMAC-SHA256 with a shared secret: whoever verifies can also sign.
    HS256,
}

impl Alg {
    /// Reads the `alg` of a key file entry (the JOSE names, exactly).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "EdDSA" => Some(Alg::EdDSA),
            "HS256" => Some(Alg::HS256),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Alg::EdDSA => "EdDSA",
            Alg::HS256 => "HS256",
        }
    }

    pub(crate) fn jwt(self) -> Algorithm {
        match self {
            Alg::EdDSA => Algorithm::EdDSA,
            Alg::HS256 => Algorithm::HS256,
        }
    }
}

/// What is wrong with a key file. Messages name the key, never its material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the key file {path}")]
    Read { path: String, source: std::io::Error },
    #[error("the key file is not valid JSON of the form {{\"keys\": [...]}}: {0}")]
    Json(String),
    #[error("the key file has no keys")]
    Empty,
    #[error("key {kid:?}: {problem}")]
    Key { kid: String, problem: String },
    #[error("the random source failed")]
    Random,
}

fn key_error(kid: &str, problem: impl Into<String>) -> KeyError {
    KeyError::Key { kid: kid.to_owned(), problem: problem.into() }
}

/// One usable key.
pub struct Key {
    alg: Alg,
    verify: DecodingKey,
    /// Present when the file holds private material (EdDSA private key, or any
    /// HS256 secret).
    sign: Option<EncodingKey>,
}

impl Key {
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// Whether the key file holds this key's private material (an EdDSA private
    /// key or an HS256 secret): whoever reads it can sign tokens.
    pub fn can_sign(&self) -> bool {
        self.sign.is_some()
    }

    pub(crate) fn verifying(&self) -> &DecodingKey {
        &self.verify
    }

    pub(crate) fn signing(&self) -> Option<&EncodingKey> {
        self.sign.as_ref()
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the material.
        f.debug_struct("Key").field("alg", &self.alg).field("can_sign", &self.sign.is_some()).finish()
    }
}

/// Every key of a key file, by `kid`.
#[derive(Debug)]
pub struct KeySet {
    keys: HashMap<String, Key>,
    /// In file order, for messages and for choosing a default signing key.
    kids: Vec<String>,
}

impl KeySet {
    /// Reads a key file.
    ///
    /// # Errors
    /// [`KeyError`] naming the file or the key at fault.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| KeyError::Read { path: path.display().to_string(), source })?;
        Self::from_json(&text)
    }

    /// Reads the text of a key file.
    ///
    /// # Errors
    /// [`KeyError`] naming the key at fault.
    pub fn from_json(text: &str) -> Result<Self, KeyError> {
        let file: KeyFile = serde_json::from_str(text).map_err(|e| KeyError::Json(json_problem(&e)))?;
        Self::from_file_contents(&file)
    }

    /// Builds the keys of a parsed key file.
    ///
    /// # Errors
    /// [`KeyError`] naming the key at fault.
    pub fn from_file_contents(file: &KeyFile) -> Result<Self, KeyError> {
        crate::provider::install();
        if file.keys.is_empty() {
            return Err(KeyError::Empty);
        }
        let mut keys = HashMap::new();
        let mut kids = Vec::new();
        for entry in &file.keys {
            let key = parse_entry(entry)?;
            if keys.insert(entry.kid.clone(), key).is_some() {
                return Err(key_error(&entry.kid, "this kid appears twice"));
            }
            kids.push(entry.kid.clone());
        }
        Ok(Self { keys, kids })
    }

    pub fn get(&self, kid: &str) -> Option<&Key> {
        self.keys.get(kid)
    }

    /// The key ids, in file order.
    pub fn kids(&self) -> &[String] {
        &self.kids
    }

    /// The only key, when there is exactly one: tokens without a `kid` are
    /// checked with it.
    pub(crate) fn single(&self) -> Option<&Key> {
        match self.kids.as_slice() {
            [only] => self.keys.get(only),
            _ => None,
        }
    }
}

/// A serde error without the input it quotes: a key file's text is secret.
fn json_problem(error: &serde_json::Error) -> String {
    format!("{:?} error at line {} column {}", error.classify(), error.line(), error.column())
}

fn parse_entry(entry: &KeyEntry) -> Result<Key, KeyError> {
    let kid = entry.kid.as_str();
    if kid.is_empty() || kid.len() > MAX_KID_LEN || kid.chars().any(char::is_control) {
        return Err(key_error(kid, format!("a kid must be 1 to {MAX_KID_LEN} printable bytes")));
    }
    let alg = Alg::parse(&entry.alg)
        .ok_or_else(|| key_error(kid, format!("alg {:?} is not EdDSA or HS256", entry.alg)))?;
    match alg {
        Alg::HS256 => {
            if entry.public_key.is_some() || entry.private_key.is_some() {
                return Err(key_error(kid, "an HS256 key has a secret, not public_key or private_key"));
            }
            let encoded =
                entry.secret.as_deref().ok_or_else(|| key_error(kid, "an HS256 key needs secret"))?;
            let secret = STANDARD
                .decode(encoded.trim())
                .map_err(|_| key_error(kid, "secret is not standard base64"))?;
            if secret.len() < MIN_SECRET_BYTES {
                return Err(key_error(kid, format!("secret must be at least {MIN_SECRET_BYTES} bytes")));
            }
            Ok(Key {
                alg,
                verify: DecodingKey::from_secret(&secret),
                sign: Some(EncodingKey::from_secret(&secret)),
            })
        }
        Alg::EdDSA => {
            if entry.secret.is_some() {
                return Err(key_error(kid, "an EdDSA key has public_key or private_key, not secret"));
            }
            match (&entry.private_key, &entry.public_key) {
                (Some(private), public) => {
                    let der = PrivatePkcs8KeyDer::from_pem_slice(private.as_bytes())
                        .map_err(|_| key_error(kid, "private_key is not a PKCS#8 PEM (BEGIN PRIVATE KEY)"))?;
                    let raw = crate::provider::ed25519_public_of(der.secret_pkcs8_der())
                        .ok_or_else(|| key_error(kid, "private_key is not an Ed25519 key"))?;
                    if let Some(public) = public
                        && ed25519_public_from_pem(kid, public)? != raw
                    {
                        return Err(key_error(kid, "public_key does not belong to private_key"));
                    }
                    Ok(Key {
                        alg,
                        verify: DecodingKey::from_ed_der(&raw),
                        sign: Some(EncodingKey::from_ed_der(der.secret_pkcs8_der())),
                    })
                }
                (None, Some(public)) => {
                    let raw = ed25519_public_from_pem(kid, public)?;
                    Ok(Key { alg, verify: DecodingKey::from_ed_der(&raw), sign: None })
                }
                (None, None) => Err(key_error(kid, "an EdDSA key needs public_key or private_key")),
            }
        }
    }
}

fn ed25519_public_from_pem(kid: &str, pem: &str) -> Result<Vec<u8>, KeyError> {
    let der = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| key_error(kid, "public_key is not an SPKI PEM (BEGIN PUBLIC KEY)"))?;
    match der.as_ref().strip_prefix(&ED25519_SPKI_PREFIX[..]) {
        Some(raw) if raw.len() == 32 => Ok(raw.to_vec()),
        _ => Err(key_error(kid, "public_key is not an Ed25519 key")),
    }
}

/// Writes DER as PEM with the given label.
fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A new key: an Ed25519 private key (PKCS#8 PEM) or a 32-byte HS256 secret.
///
/// # Errors
/// [`KeyError::Random`] when the system's random source fails.
pub fn generate(alg: Alg, kid: &str) -> Result<KeyEntry, KeyError> {
    let rng = SystemRandom::new();
    let entry = KeyEntry {
        kid: kid.to_owned(),
        alg: alg.as_str().to_owned(),
        public_key: None,
        private_key: None,
        secret: None,
    };
    match alg {
        Alg::EdDSA => {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Random)?;
            Ok(KeyEntry { private_key: Some(pem("PRIVATE KEY", pkcs8.as_ref())), ..entry })
        }
        Alg::HS256 => {
            let mut secret = [0u8; MIN_SECRET_BYTES];
            rng.fill(&mut secret).map_err(|_| KeyError::Random)?;
            Ok(KeyEntry { secret: Some(STANDARD.encode(secret)), ..entry })
        }
    }
}

/// The same key file with every EdDSA private key replaced by its public key:
/// what a server that only verifies needs. HS256 secrets cannot be made public
/// and are refused.
///
/// # Errors
/// [`KeyError`] for an HS256 key or unreadable material.
pub fn public_only(file: &KeyFile) -> Result<KeyFile, KeyError> {
    let mut out = Vec::with_capacity(file.keys.len());
    for entry in &file.keys {
        if Alg::parse(&entry.alg) == Some(Alg::HS256) {
            return Err(key_error(
                &entry.kid,
                "an HS256 secret has no public half; share it or leave it out",
            ));
        }
        let public = match (&entry.private_key, &entry.public_key) {
            (_, Some(public)) => public.clone(),
            (Some(private), None) => {
                let der = PrivatePkcs8KeyDer::from_pem_slice(private.as_bytes())
                    .map_err(|_| key_error(&entry.kid, "private_key is not a PKCS#8 PEM"))?;
                let raw = crate::provider::ed25519_public_of(der.secret_pkcs8_der())
                    .ok_or_else(|| key_error(&entry.kid, "private_key is not an Ed25519 key"))?;
                let mut spki = ED25519_SPKI_PREFIX.to_vec();
                spki.extend_from_slice(&raw);
                pem("PUBLIC KEY", &spki)
            }
            (None, None) => return Err(key_error(&entry.kid, "no key material")),
        };
        out.push(KeyEntry {
            kid: entry.kid.clone(),
            alg: entry.alg.clone(),
            public_key: Some(public),
            private_key: None,
            secret: None,
        });
    }
    Ok(KeyFile { keys: out })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(entries: Vec<KeyEntry>) -> KeyFile {
        KeyFile { keys: entries }
    }

    #[test]
    fn generated_keys_read_back_and_public_halves_verify_only() {
        let ed = generate(Alg::EdDSA, "ed").unwrap();
        let hs = generate(Alg::HS256, "hs").unwrap();
        let set = KeySet::from_file_contents(&file(vec![ed.clone(), hs])).unwrap();
        assert_eq!(set.kids(), ["ed", "hs"]);
        assert!(set.get("ed").unwrap().signing().is_some());
        assert_eq!(set.get("hs").unwrap().alg(), Alg::HS256);

        let public = public_only(&file(vec![ed.clone()])).unwrap();
        assert!(public.keys[0].private_key.is_none());
        let set = KeySet::from_file_contents(&public).unwrap();
        assert!(set.get("ed").unwrap().signing().is_none());

        // Both halves given: they must belong together.
        let mut both = ed.clone();
        both.public_key = public.keys[0].public_key.clone();
        KeySet::from_file_contents(&file(vec![both])).unwrap();
        let other = public_only(&file(vec![generate(Alg::EdDSA, "x").unwrap()])).unwrap();
        let mut mismatched = ed;
        mismatched.public_key = other.keys[0].public_key.clone();
        let err = KeySet::from_file_contents(&file(vec![mismatched])).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }

    #[test]
    fn bad_key_files_are_refused_without_echoing_material() {
        let secret = STANDARD.encode([7u8; 16]);
        let cases = [
            (r#"{"keys": []}"#.to_owned(), "no keys"),
            (r#"{"keys": [{"kid": "a", "alg": "RS256", "secret": "x"}]}"#.to_owned(), "not EdDSA or HS256"),
            (r#"{"keys": [{"kid": "a", "alg": "none", "secret": "x"}]}"#.to_owned(), "not EdDSA or HS256"),
            (format!(r#"{{"keys": [{{"kid": "a", "alg": "HS256", "secret": "{secret}"}}]}}"#), "at least 32"),
            (r#"{"keys": [{"kid": "a", "alg": "HS256", "secret": "not base64!!"}]}"#.to_owned(), "base64"),
            (r#"{"keys": [{"kid": "a", "alg": "EdDSA"}]}"#.to_owned(), "needs public_key"),
            (r#"{"keys": [{"kid": "a", "alg": "EdDSA", "public_key": "SECRETSTUFF"}]}"#.to_owned(), "SPKI"),
            (r#"{"keys": [{"kid": "", "alg": "HS256"}]}"#.to_owned(), "kid must be"),
            (r#"{"keys": [{"kid": "a", "alg": "HS256", "sekret": "SECRETSTUFF"}]}"#.to_owned(), "line 1"),
            ("SECRETSTUFF".to_owned(), "line 1"),
        ];
        for (text, needle) in cases {
            let err = KeySet::from_json(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
            assert!(!err.contains("SECRETSTUFF"), "the error echoes key material: {err}");
        }
        let hs = generate(Alg::HS256, "dup").unwrap();
        let err = KeySet::from_file_contents(&file(vec![hs.clone(), hs])).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }
}
