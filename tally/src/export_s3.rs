//! `tally export --out s3://BUCKET/PREFIX`: the export written to a local temporary file,
//! then uploaded as one S3 object, `PREFIX/<kind>-<period>[-<org>][-<meter>].<ext>`.
//!
//! Why a temporary file rather than streaming rows into the upload: S3 needs each part's
//! length before it is sent, and a failed part is retried from its bytes; a file gives both
//! for any export size while the export itself keeps streaming a ledger page at a time.
//! Files up to [`PART_BYTES`] go up with one `PutObject`; larger ones as a multipart upload
//! of [`PART_BYTES`] parts (S3 allows 10,000 parts, so up to 640 GiB), aborted if a part
//! fails so no orphaned parts are billed. The object appears whole or not at all.
//!
//! The client is the same AWS configuration as every other command (`--aws-endpoint` for an
//! emulator, where path-style addressing is used because `bucket.127.0.0.1` resolves to
//! nothing).

use std::path::Path;

use anyhow::{Context, bail};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use crate::settings::Common;

/// Size of a multipart upload's parts, and the largest file sent with one `PutObject`.
pub const PART_BYTES: u64 = 64 * 1024 * 1024;
/// Longest object key S3 takes, in bytes.
const MAX_KEY_BYTES: usize = 1024;

/// Where `--out s3://…` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Target {
    /// The bucket.
    pub bucket: String,
    /// The key prefix, without a trailing `/` (empty: the bucket's top level).
    pub prefix: String,
}

impl S3Target {
    /// `None` when `out` is not an `s3://` URL; otherwise the target, or why it is refused
    /// (naming `--out`).
    pub fn parse(out: &str) -> Option<anyhow::Result<S3Target>> {
        let rest = out.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !valid_bucket {
            return Some(Err(anyhow::anyhow!(
                "--out: {bucket:?} is not an S3 bucket name (3 to 63 lowercase letters, digits, dots and hyphens)"
            )));
        }
        let prefix = prefix.trim_end_matches('/');
        if prefix.len() > MAX_KEY_BYTES - 128 || prefix.chars().any(char::is_control) {
            return Some(Err(anyhow::anyhow!(
                "--out: the key prefix must be at most {} bytes without control characters",
                MAX_KEY_BYTES - 128
            )));
        }
        Some(Ok(S3Target {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        }))
    }

    /// The object key of `file_name` under the prefix.
    pub fn key(&self, file_name: &str) -> String {
        if self.prefix.is_empty() {
            file_name.to_owned()
        } else {
            format!("{}/{file_name}", self.prefix)
        }
    }

    /// `s3://bucket/key`.
    pub fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}

/// Uploads `path` as `key`; answers the bytes sent.
pub async fn upload(
    common: &Common,
    target: &S3Target,
    key: &str,
    path: &Path,
) -> anyhow::Result<u64> {
    let config = tally_store::aws::sdk_config(common.aws_endpoint.as_deref()).await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(common.aws_endpoint.is_some())
            .build(),
    );
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let body = |offset: u64, length: u64| async move {
        ByteStream::read_from()
            .path(path)
            .offset(offset)
            .length(Length::Exact(length))
            .build()
            .await
            .with_context(|| format!("cannot read {}", path.display()))
    };
    let url = target.url(key);
    if size <= PART_BYTES {
        s3.put_object()
            .bucket(&target.bucket)
            .key(key)
            .content_type(content_type(key))
            .body(body(0, size).await?)
            .send()
            .await
            .with_context(|| format!("cannot upload {url}"))?;
        return Ok(size);
    }
    let parts = size.div_ceil(PART_BYTES);
    if parts > 10_000 {
        bail!("--out: {size} bytes need {parts} parts of {PART_BYTES} bytes; S3 takes 10,000");
    }
    let created = s3
        .create_multipart_upload()
        .bucket(&target.bucket)
        .key(key)
        .content_type(content_type(key))
        .send()
        .await
        .with_context(|| format!("cannot start the upload of {url}"))?;
    let upload_id = created
        .upload_id()
        .context("S3 answered a multipart upload without its id")?
        .to_owned();
    let mut completed = Vec::new();
    let sent: anyhow::Result<()> = async {
        for n in 0..parts {
            let offset = n * PART_BYTES;
            let length = PART_BYTES.min(size - offset);
            let part = s3
                .upload_part()
                .bucket(&target.bucket)
                .key(key)
                .upload_id(&upload_id)
                .part_number(i32::try_from(n + 1).unwrap_or(i32::MAX))
                .body(body(offset, length).await?)
                .send()
                .await
                .with_context(|| format!("cannot upload part {} of {url}", n + 1))?;
            completed.push(
                CompletedPart::builder()
                    .part_number(i32::try_from(n + 1).unwrap_or(i32::MAX))
                    .set_e_tag(part.e_tag().map(str::to_owned))
                    .build(),
            );
        }
        s3.complete_multipart_upload()
            .bucket(&target.bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send()
            .await
            .with_context(|| format!("cannot complete the upload of {url}"))?;
        Ok(())
    }
    .await;
    if let Err(e) = sent {
        // Parts of an upload never completed are stored (and billed) until aborted.
        let _ = s3
            .abort_multipart_upload()
            .bucket(&target.bucket)
            .key(key)
            .upload_id(&upload_id)
            .send()
            .await;
        return Err(e);
    }
    Ok(size)
}

fn content_type(key: &str) -> &'static str {
    if key.ends_with(".csv") {
        "text/csv"
    } else {
        "application/octet-stream"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_are_parsed_and_bad_ones_refused_naming_the_flag() {
        assert!(S3Target::parse("out.csv").is_none());
        let t = S3Target::parse("s3://tally-exports/finance/2026/")
            .and_then(Result::ok)
            .unwrap_or_else(|| S3Target {
                bucket: String::new(),
                prefix: String::new(),
            });
        assert_eq!(t.bucket, "tally-exports");
        assert_eq!(
            t.key("ledger-2026-03.csv"),
            "finance/2026/ledger-2026-03.csv"
        );
        assert_eq!(
            t.url("k"),
            "s3://tally-exports/k",
            "the URL the summary prints"
        );
        let top = S3Target::parse("s3://bucket").and_then(Result::ok);
        assert_eq!(top.map(|t| t.key("a.csv")), Some("a.csv".to_owned()));
        for bad in ["s3://", "s3://ab", "s3://Upper", "s3://-x-y", "s3://a_b/c"] {
            let e = S3Target::parse(bad).map(|r| r.map_err(|e| e.to_string()));
            assert!(
                matches!(&e, Some(Err(m)) if m.starts_with("--out")),
                "{bad}: {e:?}"
            );
        }
        let long = format!("s3://bucket/{}", "p".repeat(1000));
        assert!(matches!(S3Target::parse(&long), Some(Err(_))));
    }
}
