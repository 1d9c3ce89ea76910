//! The cryptography behind `jsonwebtoken`: EdDSA (Ed25519) and HS256 on `ring`,
//! the library TLS already uses. Every other algorithm is refused here, so even a
//! mistake elsewhere cannot make cherga accept an RSA, ECDSA or `none` token.
//!
//! Key conventions (cherga's own, since it builds every key it hands over):
//! - EdDSA verifying key: [`DecodingKey::from_ed_der`] over the raw 32-byte
//!   public key; signing key: [`EncodingKey::from_ed_der`] over PKCS#8 DER.
//! - HS256: the secret bytes on both sides.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use std::sync::Once;

/// Makes the ring provider jsonwebtoken's default, once per process. Another
/// provider installed first (by an embedding program) is left in place.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = PROVIDER.install_default();
    });
}

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

fn refused() -> Error {
    ErrorKind::InvalidAlgorithm.into()
}

fn new_signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    match (algorithm, key.family()) {
        (Algorithm::HS256, AlgorithmFamily::Hmac) => {
            Ok(Box::new(Hs256(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes()))))
        }
        (Algorithm::EdDSA, AlgorithmFamily::Ed) => {
            let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(key.as_bytes())
                .map_err(|_| Error::from(ErrorKind::InvalidEddsaKey))?;
            Ok(Box::new(EdSigner(pair)))
        }
        _ => Err(refused()),
    }
}

fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    match (algorithm, key.family()) {
        (Algorithm::HS256, AlgorithmFamily::Hmac) => {
            let secret = key.try_get_as_bytes()?;
            Ok(Box::new(Hs256(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))))
        }
        (Algorithm::EdDSA, AlgorithmFamily::Ed) => {
            let public = key.try_get_as_bytes()?;
            if public.len() != 32 {
                return Err(ErrorKind::InvalidEddsaKey.into());
            }
            Ok(Box::new(EdVerifier(public.to_vec())))
        }
        _ => Err(refused()),
    }
}

struct Hs256(ring::hmac::Key);

impl Signer<Vec<u8>> for Hs256 {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        Ok(ring::hmac::sign(&self.0, msg).as_ref().to_vec())
    }
}

impl JwtSigner for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

impl Verifier<Vec<u8>> for Hs256 {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        // Constant-time comparison inside ring.
        ring::hmac::verify(&self.0, msg, signature).map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

struct EdSigner(Ed25519KeyPair);

impl Signer<Vec<u8>> for EdSigner {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        Ok(self.0.sign(msg).as_ref().to_vec())
    }
}

impl JwtSigner for EdSigner {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

struct EdVerifier(Vec<u8>);

impl Verifier<Vec<u8>> for EdVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        UnparsedPublicKey::new(&ED25519, &self.0).verify(msg, signature).map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for EdVerifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

/// The raw public key of a PKCS#8 Ed25519 private key.
pub fn ed25519_public_of(pkcs8: &[u8]) -> Option<Vec<u8>> {
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).ok().map(|pair| pair.public_key().as_ref().to_vec())
}
