//! A remote cache on S3-compatible object storage: `s3://bucket/prefix`.
//!
//! Configuration comes from the standard AWS places, as the AWS CLI reads them: the
//! environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION` / `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` for MinIO, Ceph, moto...), else
//! `~/.aws/credentials` (profile `AWS_PROFILE`, default `default`). Credentials go to the
//! client only: never into a message, a log, a key or a record.

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use super::RemoteError;

/// `rest` is the URL after `s3://`: `bucket/prefix...`.
pub fn open(url: &str, rest: &str) -> Result<(Arc<dyn ObjectStore>, String), RemoteError> {
    let cfg = |message: String| RemoteError::Config { url: url.to_string(), message };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(cfg("no bucket: use s3://bucket/prefix".into()));
    }
    if bucket.contains(['@', ':']) {
        // Never accept credentials in a URL: they would end up in messages and records.
        return Err(RemoteError::Config {
            url: "s3://[redacted]".into(),
            message: "credentials do not belong in the URL: use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or ~/.aws/credentials".into(),
        });
    }
    // `a/../b`, `a/./b` and `a//b` would be stored under other names than they read as
    // (object_store encodes `..` as `%2E%2E` and drops empty segments): refuse them.
    if prefix.trim_matches('/').split('/').any(|s| s == "." || s == "..") || prefix.trim_matches('/').contains("//") {
        return Err(cfg(format!("the prefix {prefix:?} has an empty, `.` or `..` segment: name the prefix as its objects are stored (a/b)")));
    }
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
    if var("AWS_ACCESS_KEY_ID").is_none() {
        let found = pipeline_crowd::mturk::Credentials::from_env_or_profile(None);
        // a credentials file that cannot be used is said here: the server's refusal that
        // follows (object_store then asks the instance metadata) does not say why
        let file = pipeline_crowd::mturk::credentials_path();
        if let (Err(e), Some(true)) = (&found, file.map(|f| f.symlink_metadata().is_ok())) {
            tracing::warn!("remote {}: no credentials from the environment or the credentials file: {}", crate::text::redact(url), crate::text::redact(&e.to_string()));
        }
        if let Ok(c) = found {
            crate::text::register_secret(&c.access_key_id);
            crate::text::register_secret(&c.secret_access_key);
            if let Some(t) = &c.session_token {
                crate::text::register_secret(t);
            }
            b = b.with_access_key_id(c.access_key_id).with_secret_access_key(c.secret_access_key);
            if let Some(t) = c.session_token {
                b = b.with_token(t);
            }
        }
    }
    if var("AWS_REGION").is_none() && var("AWS_DEFAULT_REGION").is_none() {
        b = b.with_region("us-east-1");
    } else if let Some(r) = var("AWS_REGION") {
        b = b.with_region(r);
    }
    let endpoint = var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL")).or_else(|| var("AWS_ENDPOINT"));
    // `http://user:password@host`: the password is redacted wherever the endpoint is shown
    // (found by a hostile pass: the "unreachable" error printed it)
    if let Some(info) = endpoint.as_deref().and_then(|e| e.split_once("://")).and_then(|(_, rest)| rest.split('/').next()).and_then(|h| h.rsplit_once('@')).map(|(info, _)| info) {
        crate::text::register_secret(info);
        if let Some((_, pw)) = info.split_once(':') {
            crate::text::register_secret(pw);
        }
    }
    let mut client = ClientOptions::new().with_timeout(std::time::Duration::from_secs(30)).with_connect_timeout(std::time::Duration::from_secs(5));
    if let Some(ep) = &endpoint {
        b = b.with_endpoint(ep.clone()).with_virtual_hosted_style_request(false);
        if ep.starts_with("http://") {
            client = client.with_allow_http(true);
        }
    }
    let retry = RetryConfig { max_retries: 5, retry_timeout: std::time::Duration::from_secs(45), ..Default::default() };
    let store = b
        .with_client_options(client)
        .with_retry(retry)
        // moto and MinIO implement If-None-Match: create-if-absent puts.
        .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
        .build()
        .map_err(|e| cfg(crate::text::clean(&e.to_string())))?;
    Ok((Arc::new(store), prefix.trim_matches('/').to_string()))
}
