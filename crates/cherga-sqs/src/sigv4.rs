//! AWS Signature Version 4, verified: the canonical request, the string to sign
//! and the signing key as AWS documents them ("Create a signed AWS API
//! request"), with access keys that cherga issues, each mapped to its scopes.
//!
//! The key file has one key a line: `<access key id> <secret> <scope>...`
//! (`#` starts a comment), as `cherga token issue --sqs` prints them.

use crate::protocol::SqsError;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use cherga_auth::Scopes;
use hmac::{KeyInit as _, Mac as _};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;

type HmacSha256 = hmac::Hmac<Sha256>;

/// How far a request's `X-Amz-Date` may be from the server's clock, as AWS allows.
const MAX_SKEW_MS: i64 = 15 * 60 * 1000;

/// One access key.
#[derive(Clone, Debug)]
pub struct AccessKey {
    pub secret: String,
    pub scopes: Scopes,
}

/// The access keys the endpoint accepts, by id.
#[derive(Clone, Debug, Default)]
pub struct AccessKeys {
    keys: HashMap<String, AccessKey>,
}

impl AccessKeys {
    /// Reads a key file.
    ///
    /// # Errors
    /// A message naming the first line that is not `<id> <secret> <scope>...`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(id), Some(secret)) = (words.next(), words.next()) else {
                return Err(format!("line {}: expected `<access key id> <secret> <scope>...`", n + 1));
            };
            if !id.bytes().all(|b| b.is_ascii_alphanumeric()) || secret.len() < 16 {
                return Err(format!(
                    "line {}: an access key id is letters and digits, a secret at least 16 characters",
                    n + 1
                ));
            }
            let scopes: Vec<&str> = words.collect();
            if scopes.is_empty() {
                return Err(format!("line {}: key {id} has no scopes", n + 1));
            }
            let key = AccessKey { secret: secret.to_owned(), scopes: Scopes::parse(scopes) };
            if keys.insert(id.to_owned(), key).is_some() {
                return Err(format!("line {}: key {id} appears twice", n + 1));
            }
        }
        if keys.is_empty() {
            return Err("the key file has no keys".into());
        }
        Ok(Self { keys })
    }

    /// A key line for `scopes` whose id and secret are made from `random`
    /// (which must come from a cryptographic source): 80 bits of id, 160 of secret.
    pub fn issue(random: &[u8; 30], scopes: &[String]) -> String {
        use base64::Engine as _;
        const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let mut id = String::from("CHRG");
        for chunk in random[..10].chunks(5) {
            let bits = chunk.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
            for i in (0..8).rev() {
                id.push(BASE32[((bits >> (i * 5)) & 31) as usize] as char);
            }
        }
        let secret = base64::engine::general_purpose::STANDARD.encode(&random[10..]);
        format!("{id} {secret} {}", scopes.join(" "))
    }

    fn get(&self, id: &str) -> Option<&AccessKey> {
        self.keys.get(id)
    }
}

fn denied(status: StatusCode, code: &'static str, message: impl Into<String>) -> SqsError {
    SqsError::auth(status, code, message)
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 …` header.
#[derive(Debug, PartialEq)]
pub struct Authorization<'a> {
    pub key_id: &'a str,
    pub date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
    pub signed_headers: Vec<&'a str>,
    pub signature: &'a str,
}

/// Reads an `Authorization` header.
///
/// # Errors
/// `IncompleteSignature` naming what is missing.
pub fn parse_authorization(value: &str) -> Result<Authorization<'_>, SqsError> {
    let incomplete = |what: &str| {
        denied(StatusCode::BAD_REQUEST, "IncompleteSignature", format!("The Authorization header {what}."))
    };
    let rest = value.strip_prefix("AWS4-HMAC-SHA256").ok_or_else(|| incomplete("is not AWS4-HMAC-SHA256"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let credential = credential.ok_or_else(|| incomplete("has no Credential"))?;
    let signed = signed.ok_or_else(|| incomplete("has no SignedHeaders"))?;
    let signature = signature.ok_or_else(|| incomplete("has no Signature"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, service, "aws4_request"] = scope[..] else {
        return Err(incomplete("has a Credential that is not <key>/<date>/<region>/<service>/aws4_request"));
    };
    Ok(Authorization {
        key_id,
        date,
        region,
        service,
        signed_headers: signed.split(';').collect(),
        signature,
    })
}

/// Percent-encodes as SigV4 does: everything but `A-Za-z0-9-_.~` (and `/` when
/// `keep_slash`).
pub fn uri_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The canonical query string: each name and value decoded and encoded again,
/// sorted by name, then value.
pub fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let decode = |s: &str| {
                form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            (uri_encode(&decode(k), false), uri_encode(&decode(v), false))
        })
        .collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// The canonical request of a request.
pub fn canonical_request(
    method: &str,
    path: &str,
    query: &str,
    headers: &[(String, String)],
    signed_headers: &[&str],
    payload_hash: &str,
) -> String {
    let mut out = String::new();
    out.push_str(method);
    out.push('\n');
    out.push_str(&uri_encode(if path.is_empty() { "/" } else { path }, true));
    out.push('\n');
    out.push_str(&canonical_query(query));
    out.push('\n');
    for name in signed_headers {
        let values: Vec<String> = headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(payload_hash);
    out
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

pub fn sha256_hex(data: &[u8]) -> String {
    crate::attributes::hex(&Sha256::digest(data))
}

/// The signature of `canonical_request` made at `amz_date` (`YYYYMMDDTHHMMSSZ`)
/// with `secret`, for `date/region/service/aws4_request`.
pub fn signature(
    secret: &str,
    amz_date: &str,
    date: &str,
    region: &str,
    service: &str,
    canonical_request: &str,
) -> String {
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign =
        format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", sha256_hex(canonical_request.as_bytes()));
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    crate::attributes::hex(&hmac(&k_signing, to_sign.as_bytes()))
}

/// Milliseconds since the epoch of an `X-Amz-Date` (`YYYYMMDDTHHMMSSZ`).
pub fn parse_amz_date(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400) + hh * 3600 + mm * 60 + ss) * 1000)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Verifies a request's signature. With no keys every request passes (`None`);
/// otherwise the signing key's scopes.
///
/// # Errors
/// `MissingAuthenticationToken`, `IncompleteSignature`, `InvalidClientTokenId`,
/// `RequestExpired`, `SignatureDoesNotMatch`.
pub(crate) fn check(
    keys: Option<&AccessKeys>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    now_ms: i64,
) -> Result<Option<Scopes>, SqsError> {
    let Some(keys) = keys else { return Ok(None) };
    let header = headers.get("authorization").and_then(|v| v.to_str().ok()).ok_or_else(|| {
        denied(
            StatusCode::FORBIDDEN,
            "MissingAuthenticationToken",
            "The request must be signed (AWS Signature Version 4).",
        )
    })?;
    let auth = parse_authorization(header)?;
    let key = keys.get(auth.key_id).ok_or_else(|| {
        denied(
            StatusCode::FORBIDDEN,
            "InvalidClientTokenId",
            "The access key id is not one this server issued.",
        )
    })?;
    if auth.service != "sqs" {
        return Err(denied(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "The credential's service must be sqs.",
        ));
    }
    if !auth.signed_headers.contains(&"host") {
        return Err(denied(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "The signed headers must include host.",
        ));
    }
    let amz_date = headers.get("x-amz-date").and_then(|v| v.to_str().ok()).ok_or_else(|| {
        denied(StatusCode::BAD_REQUEST, "IncompleteSignature", "The request must carry X-Amz-Date.")
    })?;
    let at = parse_amz_date(amz_date).ok_or_else(|| {
        denied(StatusCode::BAD_REQUEST, "IncompleteSignature", "X-Amz-Date is not YYYYMMDDTHHMMSSZ.")
    })?;
    if (at - now_ms).abs() > MAX_SKEW_MS || !amz_date.starts_with(auth.date) {
        return Err(denied(
            StatusCode::BAD_REQUEST,
            "RequestExpired",
            "The request's date is more than 15 minutes from the server's.",
        ));
    }
    let pairs: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let payload_hash = match headers.get("x-amz-content-sha256").and_then(|v| v.to_str().ok()) {
        Some(h) if h != "UNSIGNED-PAYLOAD" && h.starts_with("STREAMING") => {
            return Err(denied(
                StatusCode::BAD_REQUEST,
                "IncompleteSignature",
                "Streaming payloads are not accepted.",
            ));
        }
        _ => sha256_hex(body),
    };
    let canonical = canonical_request(
        method.as_str(),
        uri.path(),
        uri.query().unwrap_or_default(),
        &pairs,
        &auth.signed_headers,
        &payload_hash,
    );
    let expected = signature(&key.secret, amz_date, auth.date, auth.region, auth.service, &canonical);
    if !constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
        return Err(denied(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        ));
    }
    Ok(Some(key.scopes.clone()))
}
