//! The formats of authentication: the claims a bearer token (JWT) carries, the
//! key file the server and `cherga token issue` read, and the revocation API.
//!
//! They live here because this is the crate that derives serde; checking them
//! (signatures, times, scopes) is `cherga-auth`'s work.

use crate::Timestamp;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The claims of a cherga token. Unknown claims are allowed and ignored, so tokens
/// from another issuer with claims of its own are read as well.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// One audience or several (RFC 7519 allows both forms).
    #[serde(default, skip_serializing_if = "Audience::is_empty")]
    pub aud: Audience,
    /// Expiry, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<NumericDate>,
    /// Not before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<NumericDate>,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<NumericDate>,
    /// The token's id: what a revocation names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Scopes: a space-separated string (RFC 8693 `scope`) or an array of strings.
    #[serde(default, skip_serializing_if = "ScopeList::is_empty")]
    pub scope: ScopeList,
}

/// An `aud` claim: a string or an array of strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audience(pub Vec<String>);

impl Audience {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Audience {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        StringOrList::deserialize(d).map(|l| Audience(l.into_vec()))
    }
}

/// A `scope` claim: `"produce:payments consume:payments"` or
/// `["produce:payments", "consume:payments"]`, read as a list either way. In the
/// array form each item is one scope: an item with whitespace inside is refused,
/// not split (`["produce:q admin"]` must not grant `admin`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeList(pub Vec<String>);

impl ScopeList {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for ScopeList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.join(" "))
    }
}

impl<'de> Deserialize<'de> for ScopeList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match StringOrList::deserialize(d)? {
            StringOrList::One(words) => {
                Ok(ScopeList(words.split_ascii_whitespace().map(str::to_owned).collect()))
            }
            StringOrList::Many(items) => {
                if items.iter().any(|item| item.chars().any(char::is_whitespace)) {
                    return Err(de::Error::custom("a scope in an array must not contain whitespace"));
                }
                Ok(ScopeList(items))
            }
        }
    }
}

/// A JSON string or an array of strings.
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    fn into_vec(self) -> Vec<String> {
        match self {
            StringOrList::One(one) => vec![one],
            StringOrList::Many(many) => many,
        }
    }
}

impl<'de> Deserialize<'de> for StringOrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StringOrList;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StringOrList, E> {
                Ok(StringOrList::One(v.to_owned()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<StringOrList, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    if out.len() >= MAX_LIST {
                        return Err(de::Error::custom(format!("more than {MAX_LIST} items")));
                    }
                    out.push(item);
                }
                Ok(StringOrList::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// Most audiences or scopes a token may list.
const MAX_LIST: usize = 256;

/// A JSON number of seconds since the Unix epoch (RFC 7519 `NumericDate`).
/// Fractions are cut off; values beyond `i64` are clamped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NumericDate(pub i64);

impl Serialize for NumericDate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.0)
    }
}

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NumericDate;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("seconds since the Unix epoch")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumericDate, E> {
                Ok(NumericDate(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumericDate, E> {
                Ok(NumericDate(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<NumericDate, E> {
                if v.is_finite() {
                    // `as` saturates at the ends of i64.
                    Ok(NumericDate(v.trunc() as i64))
                } else {
                    Err(E::custom("not a finite number"))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// The key file (`--auth-keys`): every key the server accepts tokens from, and
/// the keys `cherga token issue` signs with.
///
/// ```json
/// {"keys": [
///   {"kid": "2026-06", "alg": "EdDSA", "public_key": "-----BEGIN PUBLIC KEY-----\n..."},
///   {"kid": "2026-01", "alg": "EdDSA", "private_key": "-----BEGIN PRIVATE KEY-----\n..."},
///   {"kid": "ci", "alg": "HS256", "secret": "base64 of at least 32 random bytes"}
/// ]}
/// ```
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub keys: Vec<KeyEntry>,
}

/// One key of a [`KeyFile`]. EdDSA keys give `public_key` (SPKI PEM; verify only)
/// or `private_key` (PKCS#8 PEM; sign and verify); HS256 keys give `secret`
/// (standard base64).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub kid: String,
    pub alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// `POST /v1/revocations`: refuse the token with this `jti` on every node.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// The `jti` claim of the token.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 256, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")
    )]
    pub jti: String,
    /// The token's `exp`: the revocation is kept until then plus the server's
    /// clock-skew leeway (30 s), for as long as the token could be accepted; a
    /// token past that is refused anyway. Absent: kept for ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

/// A revoked token id and until when the revocation is kept (its token's `exp`
/// plus the clock-skew leeway).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RevocationView {
    pub jti: String,
    pub expires_at: Timestamp,
}

/// `GET /v1/revocations`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RevocationList {
    pub revocations: Vec<RevocationView>,
}

/// `GET /v1/whoami`: who the server takes the caller for and what it may do, so
/// a client (the dashboard) can offer only the actions its token allows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WhoAmI {
    /// Whether the server checks tokens. When `false`, every caller may do
    /// everything (`scopes` is `["admin"]`).
    pub auth: bool,
    /// The token's `sub`; `null` with auth off or a token without one.
    pub subject: Option<String>,
    /// The token's scopes as the server read them (words it did not
    /// understand are left out): `admin`, `produce:<pattern>`,
    /// `consume:<pattern>`, `read:<pattern>`.
    pub scopes: Vec<String>,
    /// When the token expires; `null` with auth off.
    pub expires_at: Option<Timestamp>,
}
