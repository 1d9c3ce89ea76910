//! `cherga keygen` and `cherga token issue | revoke`: keys and tokens for a
//! server with authentication on. Tokens are never stored anywhere; only
//! revocations are (in the store, through the server).

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use cherga_api::Timestamp;
use cherga_api::auth::{Claims, KeyFile, RevokeRequest};
use cherga_auth::{Alg, KeySet, NewToken};
use clap::{Args, Subcommand};
use std::io::Write as _;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Key id (`kid`) of the new key. A date in it makes rotation easy to follow,
    /// e.g. `2026-06`.
    #[arg(long, required_unless_present = "public_of")]
    kid: Option<String>,
    /// `EdDSA` (Ed25519; servers need only the public key) or `HS256` (a shared
    /// 32-byte secret).
    #[arg(long, default_value = "EdDSA")]
    alg: String,
    /// Add the new key to this key file (created with mode 0600 if missing)
    /// instead of printing it.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Print the public half of this key file (every EdDSA key as a public key),
    /// for servers that verify tokens but must not be able to sign them.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["kid", "out"])]
    public_of: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Prints a signed token.
    Issue(IssueArgs),
    /// Revokes a token on every node (needs an admin token).
    Revoke(RevokeArgs),
}

#[derive(Args, Debug)]
pub struct IssueArgs {
    /// Print an access key of the SQS endpoint instead of a token: a line
    /// `<access key id> <secret> <scope>...` for its --sqs-keys file.
    #[arg(long, conflicts_with_all = ["keys", "kid", "sub", "ttl", "json"])]
    sqs: bool,
    /// Key file holding the signing key.
    #[arg(long, env = "CHERGA_AUTH_KEYS", value_name = "FILE", required_unless_present = "sqs")]
    keys: Option<PathBuf>,
    /// Which key signs (its `kid`); may be left out when the file has one key.
    #[arg(long)]
    kid: Option<String>,
    /// Who the token is for (`sub`), e.g. the service's name.
    #[arg(long, required_unless_present = "sqs")]
    sub: Option<String>,
    /// A scope: `produce:<queue-pattern>`, `consume:<queue-pattern>` or `admin`;
    /// `*` in a pattern matches any characters. One per flag: repeat for several.
    #[arg(long = "scope", required = true)]
    scopes: Vec<String>,
    /// How long the token is valid, e.g. `30d`, `12h`.
    #[arg(long, value_parser = humantime::parse_duration, required_unless_present = "sqs")]
    ttl: Option<std::time::Duration>,
    /// The issuer (`iss`); must match the server's --auth-issuer.
    #[arg(long, env = "CHERGA_AUTH_ISSUER", default_value = "cherga")]
    issuer: String,
    /// The audience (`aud`); must match the server's --auth-audience.
    #[arg(long, env = "CHERGA_AUTH_AUDIENCE", default_value = "cherga")]
    audience: String,
    /// Print the claims as JSON (with `token`) instead of the bare token.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    /// The token's `jti`, or the whole token (then its `jti` and `exp` are read
    /// from it, and the revocation is kept until the token would expire, with the
    /// server's clock-skew leeway on top).
    jti_or_token: String,
    /// The token's expiry, as an RFC 3339 time: the server keeps the revocation
    /// until then plus its clock-skew leeway. Default: the token's `exp` when a
    /// whole token is given, else for ever.
    #[arg(long)]
    until: Option<String>,
    #[command(flatten)]
    server: crate::cli::ServerArgs,
}

pub fn keygen(args: KeygenArgs) -> Result<()> {
    if let Some(path) = &args.public_of {
        let file = read_key_file(path)?;
        let public = cherga_auth::public_only(&file).context("making the public key file")?;
        println!("{}", serde_json::to_string_pretty(&public)?);
        return Ok(());
    }
    let kid = args.kid.as_deref().unwrap_or_default();
    let alg = Alg::parse(&args.alg).with_context(|| format!("--alg {:?}: use EdDSA or HS256", args.alg))?;
    let entry = cherga_auth::generate(alg, kid)?;
    match &args.out {
        None => println!("{}", serde_json::to_string_pretty(&KeyFile { keys: vec![entry] })?),
        Some(path) => {
            let mut file = if path.exists() { read_key_file(path)? } else { KeyFile { keys: Vec::new() } };
            if file.keys.iter().any(|k| k.kid == kid) {
                bail!("{} already has a key with kid {kid:?}", path.display());
            }
            file.keys.push(entry);
            KeySet::from_file_contents(&file).context("the key file with the new key")?;
            write_private(path, &serde_json::to_string_pretty(&file)?)?;
            eprintln!("added {} key {kid:?} to {}", alg.as_str(), path.display());
        }
    }
    Ok(())
}

fn read_key_file(path: &Path) -> Result<KeyFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // Parsed through KeySet first so that a broken file is reported without
    // quoting its (secret) text.
    KeySet::from_json(&text).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
}

/// Writes `text` to `path` readable by the owner only, replacing it atomically.
fn write_private(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

pub async fn token(command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Issue(args) => issue(args),
        TokenCommand::Revoke(args) => revoke(args).await,
    }
}

fn issue(args: IssueArgs) -> Result<()> {
    // One flag, one scope: a value with whitespace inside is refused, not split,
    // so that a templated `--scope "$SCOPES"` grants nothing by accident.
    let scopes = args.scopes;
    if let Some(bad) = scopes.iter().find(|s| s.chars().any(char::is_whitespace)) {
        bail!("--scope {bad:?}: give one scope per --scope (repeat the flag for several)");
    }
    if let Some(bad) = scopes.iter().find(|s| cherga_auth::Scopes::parse([s.as_str()]) == Default::default())
    {
        bail!("--scope {bad:?}: a scope is produce:<queue-pattern>, consume:<queue-pattern> or admin");
    }
    if args.sqs {
        let mut random = [0u8; 30];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
            .map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
        println!("{}", cherga_sqs::AccessKeys::issue(&random, &scopes));
        return Ok(());
    }
    let keys = KeySet::from_file(args.keys.as_deref().context("--keys is required")?).context("--keys")?;
    let ttl = args.ttl.context("--ttl is required")?;
    let ttl_s = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    if ttl_s <= 0 {
        bail!("--ttl must be at least one second");
    }
    let now_s = cherga_server::now_ms() / 1000;
    let new = NewToken {
        subject: args.sub.context("--sub is required")?,
        scopes,
        issuer: args.issuer,
        audience: args.audience,
        now_s,
        ttl_s,
        jti: None,
    };
    let (token, claims) = cherga_auth::issue(&keys, args.kid.as_deref(), &new)?;
    if args.json {
        let mut value = serde_json::to_value(&claims)?;
        value["token"] = serde_json::Value::String(token);
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{token}");
    }
    Ok(())
}

async fn revoke(args: RevokeArgs) -> Result<()> {
    let (jti, token_exp) = if args.jti_or_token.matches('.').count() == 2 {
        let claims = unverified_claims(&args.jti_or_token)?;
        let jti = claims.jti.context("the token has no jti claim")?;
        (jti, claims.exp.map(|e| e.0.saturating_mul(1000)))
    } else {
        (args.jti_or_token.clone(), None)
    };
    let expires_at = match &args.until {
        Some(text) => Some(Timestamp::parse(text).map_err(|e| anyhow::anyhow!("--until: {e}"))?),
        None => token_exp.map(|ms| Timestamp(ms.clamp(0, cherga_api::time::MAX_MILLIS))),
    };
    let view = args.server.client()?.revoke(&RevokeRequest { jti, expires_at }).await?;
    println!("revoked {} until {}", view.jti, view.expires_at.to_rfc3339());
    Ok(())
}

/// The claims of a token, read without checking its signature: only to learn
/// which `jti` to revoke and for how long.
fn unverified_claims(token: &str) -> Result<Claims> {
    let payload = token.split('.').nth(1).context("not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .context("the token's payload is not base64url")?;
    serde_json::from_slice(&bytes).context("the token's payload is not a JSON claims object")
}
