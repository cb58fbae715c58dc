//! Where the Parquet dataset lives, and how to reach it: what the collector writes to and what
//! `switchboard query --data` reads from.
//!
//! A location is a local directory (`/var/lib/switchboard/data`, or `file:///var/lib/…`) or an
//! S3 bucket and prefix (`s3://bucket/prefix`). For S3, the endpoint, region and credentials come
//! from [`StoreOptions`] (the collector's `[collector.store]`) over the usual `AWS_*` environment
//! variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
//! `AWS_ALLOW_HTTP`, …); requests are path-style (`endpoint/bucket/key`, what on-premise S3
//! servers expect) unless `virtual_hosted_style` is set.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::{ClientOptions, ObjectStore, RetryConfig};
use serde::{Deserialize, Serialize};

/// `_switchboard`, or a path below it: the one spelling of the collectors' directory.
macro_rules! meta {
    () => {
        "_switchboard"
    };
    ($below:literal) => {
        concat!(meta!(), "/", $below)
    };
}

/// The directory below a dataset's root where the collectors keep their commit log and staged
/// files: every dataset a collector has started on has it, from its first claim on.
pub const META_DIR: &str = meta!();
/// Below the dataset root: the commit log's slots.
pub const LOG_DIR: &str = meta!("log");
/// Below the dataset root: files written but not yet published (`<writer>/…parquet.tmp`).
pub const STAGING_DIR: &str = meta!("staging");
/// The commit log's tail hint.
pub const TAIL_KEY: &str = meta!("log/_tail.json");
/// Below the dataset root: one small object per standby collector (`<name>.json`), rewritten to
/// learn whether it can write the store before it takes the dataset from a live writer.
pub const PROBE_DIR: &str = meta!("probe");

/// A dataset location that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The location is not a path, `file://…` or `s3://bucket[/prefix]`.
    #[error("dataset location {text:?}: {why}")]
    Location {
        /// The location as given.
        text: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The S3 settings cannot work, said before any request is made.
    #[error("object store for {location}: {why}")]
    Settings {
        /// The location.
        location: String,
        /// What is missing or wrong, and where to set it.
        why: String,
    },
    /// The object store client could not be built (e.g. no region or credentials).
    #[error("object store for {location}: {source}")]
    Store {
        /// The location.
        location: String,
        /// Why.
        source: object_store::Error,
    },
}

/// Where a dataset lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local (or mounted) directory.
    Local(PathBuf),
    /// An S3 bucket, and a key prefix below which the tables are (may be empty).
    S3 {
        /// The bucket.
        bucket: String,
        /// The prefix, without leading or trailing `/`.
        prefix: String,
    },
}

impl Location {
    /// Parse a directory path, `file:///path` or `s3://bucket/prefix`.
    pub fn parse(text: &str) -> Result<Self, DatasetError> {
        let refuse = |why| DatasetError::Location { text: text.to_owned(), why };
        if let Some(path) = text.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(refuse("file:// takes an absolute path (file:///path)"));
            }
            return Ok(Self::Local(PathBuf::from(path)));
        }
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let prefix = prefix.trim_matches('/');
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
            if !bucket_ok {
                return Err(refuse(
                    "an S3 bucket's name is 3 to 63 characters of a-z, 0-9, '.' and '-' (s3://bucket/prefix)",
                ));
            }
            if prefix.split('/').any(|c| c.is_empty() && !prefix.is_empty()) {
                return Err(refuse("the prefix has an empty part (`//`)"));
            }
            return Ok(Self::S3 { bucket: bucket.to_owned(), prefix: prefix.to_owned() });
        }
        if text.contains("://") || text.is_empty() {
            return Err(refuse("use a directory, file:///path or s3://bucket/prefix"));
        }
        Ok(Self::Local(PathBuf::from(text)))
    }

    /// The location as a user writes it.
    pub fn display(&self) -> String {
        match self {
            Self::Local(p) => p.display().to_string(),
            Self::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
            Self::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

/// How to reach an object store: the collector's `[collector.store]`. Every field is optional;
/// what is not set comes from the `AWS_*` environment variables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreOptions {
    /// The S3 endpoint, e.g. `http://minio.internal:9000` (default: AWS's, from the region).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The region (default: `AWS_REGION`, else `us-east-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Access key id (default: `AWS_ACCESS_KEY_ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// Secret access key (default: `AWS_SECRET_ACCESS_KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// Allow a plain `http://` endpoint (default: false, or `AWS_ALLOW_HTTP`).
    #[serde(default)]
    pub allow_http: bool,
    /// Virtual-hosted-style requests (`bucket.endpoint/key`) instead of path-style. Default: false.
    #[serde(default)]
    pub virtual_hosted_style: bool,
    /// How long one request may take, in milliseconds; a failed request is retried (3 times, within
    /// this much time again) before the error reaches the collector. Default: 10000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    10_000
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            virtual_hosted_style: false,
            timeout_ms: default_timeout_ms(),
        }
    }
}

/// An S3 client for `bucket`, configured from `options` over the environment.
pub fn s3_store(bucket: &str, options: &StoreOptions) -> Result<Arc<dyn ObjectStore>, DatasetError> {
    let timeout =
        Duration::from_millis(if options.timeout_ms == 0 { default_timeout_ms() } else { options.timeout_ms });
    // Client options first: the environment's (AWS_ALLOW_HTTP, …) are applied on top of them.
    let mut b = AmazonS3Builder::new()
        .with_client_options(ClientOptions::new().with_timeout(timeout).with_connect_timeout(timeout))
        .with_retry(RetryConfig { max_retries: 3, retry_timeout: timeout, ..RetryConfig::default() });
    for (key, value) in std::env::vars() {
        if key.starts_with("AWS_") {
            if let Ok(k) = key.to_ascii_lowercase().parse() {
                b = b.with_config(k, value);
            }
        }
    }
    let mut b = b.with_bucket_name(bucket);
    if options.virtual_hosted_style {
        b = b.with_virtual_hosted_style_request(true);
    }
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() {
        b = b.with_region("us-east-1");
    }
    if let Some(v) = &options.endpoint {
        b = b.with_endpoint(v);
    }
    if let Some(v) = &options.region {
        b = b.with_region(v);
    }
    if let Some(v) = &options.access_key_id {
        b = b.with_access_key_id(v);
    }
    if let Some(v) = &options.secret_access_key {
        b = b.with_secret_access_key(v);
    }
    if options.allow_http {
        b = b.with_allow_http(true);
    }
    check_settings(&b).map_err(|why| DatasetError::Settings { location: format!("s3://{bucket}"), why })?;
    let store = b.build().map_err(|source| DatasetError::Store { location: format!("s3://{bucket}"), source })?;
    Ok(Arc::new(store))
}

/// An object store's error as an operator reads it ([`advice`]), with the causes its text leaves
/// out (an HTTP client's `error sending request` hides the connection refused under it).
pub fn store_error_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    // A bounded walk: an error's chain is a handful of links.
    for _ in 0..16 {
        let Some(s) = source else { break };
        let said = s.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = s.source();
    }
    advice(&text)
}

/// `text` of a store's error with its `Generic S3 error:` said once (the client nests it), and
/// what to do when the answer says it: a bucket that does not exist, no credentials (the client
/// then asked AWS's instance metadata, at 169.254.169.254, for some), or an endpoint where
/// nothing answered.
fn advice(text: &str) -> String {
    const GENERIC: &str = "Generic S3 error: ";
    let mut out = text.to_owned();
    while let Some(i) = out.find(GENERIC) {
        if !out[i + GENERIC.len()..].starts_with(GENERIC) {
            break;
        }
        out.replace_range(i..i + GENERIC.len(), "");
    }
    if out.contains("NoSuchBucket") {
        return "the bucket does not exist: create it, or fix the location".to_owned();
    }
    if out.contains("error sending request") && !out.contains("169.254.169.254") {
        let lower = out.to_ascii_lowercase();
        if lower.contains("timed out") || lower.contains("timeout") {
            out.push_str(
                " (the store did not answer in time: slow or overloaded; a collector: timeout_ms in [collector.store])",
            );
        } else if ["reset", "closed", "broken pipe", "incomplete"].iter().any(|w| lower.contains(w)) {
            out.push_str(" (the connection to the store broke in the middle of a request)");
        } else {
            out.push_str(
                " (the store's endpoint did not answer: is it running, and is the endpoint right? AWS_ENDPOINT_URL; \
                 a collector: endpoint in [collector.store])",
            );
        }
    }
    if out.contains("169.254.169.254") {
        out.push_str(
            " (no credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are unset and no instance role \
             answered; for a store other than AWS, set AWS_ENDPOINT_URL too)",
        );
    }
    out
}

/// What would otherwise fail on the first request with an error that does not say why: a plain
/// `http://` endpoint without `allow_http`, and an endpoint of one's own with no credentials (the
/// client would ask AWS's instance metadata for some, and print its refusal).
fn check_settings(b: &AmazonS3Builder) -> Result<(), String> {
    use object_store::aws::AmazonS3ConfigKey as Key;
    use object_store::ClientConfigKey;
    let Some(endpoint) = b.get_config_value(&Key::Endpoint) else { return Ok(()) };
    let on = |key: &Key| {
        b.get_config_value(key)
            .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on"))
    };
    if endpoint.starts_with("http://") && !on(&Key::Client(ClientConfigKey::AllowHttp)) {
        return Err(format!(
            "the endpoint {endpoint} is plain http: set AWS_ALLOW_HTTP=true (a collector: allow_http = true \
             in [collector.store]), or use https"
        ));
    }
    if b.get_config_value(&Key::AccessKeyId).is_none() && !on(&Key::SkipSignature) {
        return Err(format!(
            "no credentials for {endpoint}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (a collector: \
             access_key_id and secret_access_key in [collector.store])"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_are_said_once_with_what_to_do() {
        let nested = "uploading k: Generic S3 error: Generic S3 error: Error performing PUT http://x/k";
        assert_eq!(advice(nested), "uploading k: Generic S3 error: Error performing PUT http://x/k");
        let bucket = "listing s3://b: Generic S3 error: <Error><Code>NoSuchBucket</Code></Error>";
        assert_eq!(advice(bucket), "the bucket does not exist: create it, or fix the location");
        let imds = "Generic S3 error: Error performing PUT http://169.254.169.254/latest/api/token: 403";
        assert!(advice(imds).contains("AWS_ACCESS_KEY_ID"), "{}", advice(imds));
        assert_eq!(advice("timed out"), "timed out");
        let slow = "reading k: Generic S3 error: error sending request: operation timed out";
        assert!(advice(slow).contains("did not answer in time"), "{}", advice(slow));
        let reset = "reading k: Generic S3 error: error sending request: connection reset by peer";
        assert!(advice(reset).contains("broke in the middle"), "{}", advice(reset));
        let refused = "reading k: Generic S3 error: error sending request: Connection refused (os error 111)";
        assert!(advice(refused).contains("is it running"), "{}", advice(refused));
        // A cause the top error's text leaves out is said, with what to do.
        #[derive(Debug)]
        struct Sending(std::io::Error);
        impl std::fmt::Display for Sending {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("HTTP error: error sending request")
            }
        }
        impl std::error::Error for Sending {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let refused = Sending(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused"));
        let text = store_error_text(&refused);
        assert!(text.contains("error sending request: Connection refused"), "{text}");
        assert!(text.contains("did not answer") && text.contains("AWS_ENDPOINT_URL"), "{text}");
    }

    #[test]
    fn locations_parse() {
        assert_eq!(Location::parse("data").unwrap(), Location::Local("data".into()));
        assert_eq!(Location::parse("file:///srv/d").unwrap(), Location::Local("/srv/d".into()));
        assert_eq!(
            Location::parse("s3://logs-bucket/sb/prod/").unwrap(),
            Location::S3 { bucket: "logs-bucket".into(), prefix: "sb/prod".into() }
        );
        assert_eq!(
            Location::parse("s3://logs-bucket").unwrap(),
            Location::S3 { bucket: "logs-bucket".into(), prefix: String::new() }
        );
        for bad in ["", "s3://", "s3://A_B/x", "s3://bucket/a//b", "gs://b/x", "file://rel"] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
        for short in ["s3://b/p", "s3://bb"] {
            let e = Location::parse(short).unwrap_err().to_string();
            assert!(e.contains("3 to 63 characters"), "{e}");
        }
        assert_eq!(Location::parse("s3://logs-bucket/sb/").unwrap().display(), "s3://logs-bucket/sb");
    }

    #[test]
    fn s3_settings_that_cannot_work_say_what_is_missing() {
        let endpoint = "http://127.0.0.1:9";
        let b = AmazonS3Builder::new().with_bucket_name("b").with_endpoint(endpoint);
        assert!(check_settings(&b).unwrap_err().contains("allow_http = true"));
        let b = b.with_allow_http(true);
        assert!(check_settings(&b).unwrap_err().contains("no credentials"));
        let b = b.with_access_key_id("k").with_secret_access_key("s");
        check_settings(&b).unwrap();
        // AWS itself (no endpoint): credentials may come from the instance or the environment.
        check_settings(&AmazonS3Builder::new().with_bucket_name("b")).unwrap();
    }
}
