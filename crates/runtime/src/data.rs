//! A task's data: URL inputs downloaded before its command, outputs uploaded
//! after it (whatever its exit code, as OSMO's controller does), and
//! checkpoints uploaded while it runs. One client for every store
//! (`object_store`): `s3://BUCKET/PREFIX` (any S3-compatible endpoint, path
//! or virtual-host style), `gs://BUCKET/PREFIX`, `azure://ACCOUNT/CONTAINER/PREFIX`,
//! `https://…` (one file, download only) and `file:///PATH` (a shared file
//! system). Files stream through in bounded buffers, several at once; a
//! `regex` keeps the files whose path (relative to the URL) it matches.
//!
//! A failure is the store's own words; the caller turns it into 2010
//! (download) or 2012 (upload).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures_util::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path as StorePath;
use tokio::io::AsyncWriteExt;

/// Files moved at once.
const CONCURRENCY: usize = 8;
/// A large file goes up in parts of this size, this many at once: memory
/// per file is bounded by their product whatever the file's size.
const PART_BYTES: usize = 32 << 20;
const PARTS_IN_FLIGHT: usize = 4;
/// Bytes read from a file at once.
const READ_BYTES: usize = 2 << 20;

/// A data credential (OSMO's DATA credential): for the URLs under `endpoint`.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataCredential {
    pub access_key_id: String,
    pub access_key: String,
    #[serde(default)]
    pub region: Option<String>,
    /// An S3-compatible server (`http://HOST:PORT`) instead of AWS's.
    #[serde(default)]
    pub override_url: Option<String>,
    /// `path` or `virtual` (S3 addressing).
    #[serde(default)]
    pub addressing_style: Option<String>,
}

impl std::fmt::Debug for DataCredential {
    // Never the secret, wherever a credential is printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataCredential")
            .field("access_key_id", &self.access_key_id)
            .field("access_key", &"****")
            .field("region", &self.region)
            .field("override_url", &self.override_url)
            .finish()
    }
}

/// One URL and the host directory it is read into or written from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Transfer {
    pub url: String,
    #[serde(default)]
    pub regex: Option<String>,
    pub dir: PathBuf,
    #[serde(default)]
    pub credential: Option<DataCredential>,
}

/// A path in the task uploaded every `every` while its command runs, and
/// once as it ends.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// As the task sees it.
    pub path: PathBuf,
    pub url: String,
    #[serde(default)]
    pub regex: Option<String>,
    pub every: std::time::Duration,
    #[serde(default)]
    pub credential: Option<DataCredential>,
}

/// What moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    pub files: u64,
    pub bytes: u64,
}

impl Moved {
    /// `3 files, 12.0 MB in 0.4 s (30.0 MB/s)`.
    pub fn describe(&self, started: Instant) -> String {
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        format!(
            "{} file{}, {} in {secs:.1} s ({}/s)",
            self.files,
            if self.files == 1 { "" } else { "s" },
            size(self.bytes as f64),
            size(self.bytes as f64 / secs)
        )
    }
}

fn size(bytes: f64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < units.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", units[unit])
    }
}

/// The files moved, or the first failure.
fn total(results: Vec<Result<u64, String>>) -> Result<Moved, String> {
    let mut moved = Moved::default();
    for r in results {
        moved.bytes += r?;
        moved.files += 1;
    }
    Ok(moved)
}

/// Checks a data URL as a submit would: a scheme this runtime reads, and
/// (for writes) one it can write.
pub fn check_url(url: &str, for_upload: bool) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match parsed.scheme() {
        "s3" | "gs" | "azure" | "file" => Ok(()),
        "http" | "https" if !for_upload => Ok(()),
        "http" | "https" => Err(format!("`{url}`: https URLs are read, not written")),
        other => Err(format!(
            "`{url}`: `{other}:` is not a data URL here (s3://, gs://, azure://, https:// or file://)"
        )),
    }
}

/// The store a URL names, and the prefix in it.
fn open(
    url: &str,
    credential: Option<&DataCredential>,
) -> Result<(Arc<dyn ObjectStore>, StorePath), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let host = parsed.host_str().unwrap_or_default().to_string();
    let path = parsed.path().trim_matches('/').to_string();
    let fail = |e: object_store::Error| format!("cannot open {url}: {e}");
    match parsed.scheme() {
        "s3" => {
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(&host)
                .with_unsigned_payload(true);
            if let Some(c) = credential {
                b = b
                    .with_access_key_id(&c.access_key_id)
                    .with_secret_access_key(&c.access_key);
                if let Some(region) = &c.region {
                    b = b.with_region(region);
                }
                if let Some(endpoint) = &c.override_url {
                    b = b
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                if c.addressing_style.as_deref() == Some("virtual") {
                    b = b.with_virtual_hosted_style_request(true);
                }
            }
            Ok((Arc::new(b.build().map_err(fail)?), StorePath::from(path)))
        }
        "gs" => {
            let b =
                object_store::gcp::GoogleCloudStorageBuilder::from_env().with_bucket_name(&host);
            Ok((Arc::new(b.build().map_err(fail)?), StorePath::from(path)))
        }
        "azure" => {
            let (container, prefix) = path.split_once('/').unwrap_or((path.as_str(), ""));
            let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_account(&host)
                .with_container_name(container);
            if let Some(c) = credential {
                b = b.with_access_key(&c.access_key);
            }
            Ok((Arc::new(b.build().map_err(fail)?), StorePath::from(prefix)))
        }
        "http" | "https" => {
            let base = format!("{}://{}", parsed.scheme(), parsed.authority());
            let b = object_store::http::HttpBuilder::new().with_url(base);
            Ok((Arc::new(b.build().map_err(fail)?), StorePath::from(path)))
        }
        "file" => {
            let root = object_store::local::LocalFileSystem::new();
            let prefix = StorePath::from_filesystem_path(parsed.path())
                .or_else(|_| StorePath::parse(path.as_str()))
                .map_err(|e| format!("cannot open {url}: {e}"))?;
            Ok((Arc::new(root), prefix))
        }
        other => Err(format!("`{other}:` URLs are not supported ({url})")),
    }
}

fn filter(regex: Option<&str>) -> Result<Option<regex::Regex>, String> {
    regex
        .map(|r| regex::Regex::new(r).map_err(|e| format!("the regex `{r}` is not valid: {e}")))
        .transpose()
}

/// The part of `location` under `prefix` (`a/b` under `data`: `data/a/b`).
fn relative(prefix: &StorePath, location: &StorePath) -> Option<String> {
    let rel: Vec<String> = location
        .prefix_match(prefix)?
        .map(|p| p.as_ref().to_string())
        .collect();
    (!rel.is_empty()).then(|| rel.join("/"))
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the transfer: {e}"))
}

/// Downloads what `t.url` holds (filtered by `t.regex`) into `t.dir`.
pub fn download(t: &Transfer, log: &dyn Fn(&str)) -> Result<Moved, String> {
    let started = Instant::now();
    let keep = filter(t.regex.as_deref())?;
    let (store, prefix) = open(&t.url, t.credential.as_ref())?;
    std::fs::create_dir_all(&t.dir)
        .map_err(|e| format!("cannot create {}: {e}", t.dir.display()))?;
    log(&format!("download {} to {}", t.url, t.dir.display()));
    let moved = runtime()?.block_on(async {
        let single_file = t.url.starts_with("http://") || t.url.starts_with("https://");
        let mut wanted = Vec::new();
        if single_file {
            let name = prefix.filename().unwrap_or("download").to_string();
            wanted.push((prefix.clone(), name, None));
        } else {
            let mut listing = store.list(Some(&prefix));
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(|e| format!("cannot list {}: {e}", t.url))?;
                let Some(rel) = relative(&prefix, &meta.location) else {
                    continue;
                };
                if keep.as_ref().is_none_or(|r| r.is_match(&rel)) {
                    wanted.push((meta.location, rel, Some(meta.size)));
                }
            }
            // The URL names one object, not a prefix.
            if wanted.is_empty()
                && let Ok(meta) = store.head(&prefix).await
            {
                let name = meta.location.filename().unwrap_or("object").to_string();
                wanted.push((meta.location, name, Some(meta.size)));
            }
        }
        let results: Vec<Result<u64, String>> = futures_util::stream::iter(wanted)
            .map(|(location, rel, size)| {
                let store = store.clone();
                let dest = t.dir.join(&rel);
                async move { fetch(store.as_ref(), &location, size, &dest).await }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        total(results)
    })?;
    log(&format!(
        "downloaded {}: {}",
        t.url,
        moved.describe(started)
    ));
    Ok(moved)
}

/// One object streamed to a file: a large one as ranges fetched several at
/// once (in order, so memory holds at most [`PARTS_IN_FLIGHT`] parts).
async fn fetch(
    store: &dyn ObjectStore,
    location: &StorePath,
    size: Option<u64>,
    dest: &Path,
) -> Result<u64, String> {
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let file = tokio::fs::File::create(dest)
        .await
        .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
    // Large writes: each write of a tokio file is a trip to a blocking thread.
    let mut file = tokio::io::BufWriter::with_capacity(READ_BYTES, file);
    let write_failed = |e: std::io::Error| format!("cannot write {}: {e}", dest.display());
    let read_failed = |e: object_store::Error| format!("cannot read {location}: {e}");
    let mut bytes = 0;
    match size {
        Some(size) if size > 2 * PART_BYTES as u64 => {
            let ranges = (0..size)
                .step_by(PART_BYTES)
                .map(|start| start..(start + PART_BYTES as u64).min(size));
            let mut parts = futures_util::stream::iter(ranges)
                .map(|range| store.get_range(location, range))
                .buffered(PARTS_IN_FLIGHT);
            while let Some(part) = parts.next().await {
                let part = part.map_err(read_failed)?;
                bytes += part.len() as u64;
                file.write_all(&part).await.map_err(write_failed)?;
            }
        }
        _ => {
            let got = store.get(location).await.map_err(read_failed)?;
            let mut stream = got.into_stream();
            while let Some(chunk) = stream
                .try_next()
                .await
                .map_err(|e| format!("reading {location} broke off: {e}"))?
            {
                bytes += chunk.len() as u64;
                file.write_all(&chunk).await.map_err(write_failed)?;
            }
        }
    }
    file.flush().await.map_err(write_failed)?;
    Ok(bytes)
}

/// Every regular file under `dir`, as paths relative to it (`a/b.txt`).
fn files_under(dir: &Path) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, rel)) = stack.pop() {
        let entries = match std::fs::read_dir(&path) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && rel.is_empty() => return Ok(out),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            // Not followed: a link could lead out of the task's output.
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push((entry.path(), rel)),
                Ok(t) if t.is_file() => out.push(rel),
                _ => {}
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Uploads the files of `t.dir` (filtered by `t.regex`) under `t.url`.
pub fn upload(t: &Transfer, log: &dyn Fn(&str)) -> Result<Moved, String> {
    let started = Instant::now();
    check_url(&t.url, true)?;
    let keep = filter(t.regex.as_deref())?;
    let (store, prefix) = open(&t.url, t.credential.as_ref())?;
    let files: Vec<String> = files_under(&t.dir)?
        .into_iter()
        .filter(|rel| keep.as_ref().is_none_or(|r| r.is_match(rel)))
        .collect();
    let plural = if files.len() == 1 { "" } else { "s" };
    log(&format!(
        "upload {} ({} file{plural}) to {}",
        t.dir.display(),
        files.len(),
        t.url
    ));
    let moved = runtime()?.block_on(async {
        let results: Vec<Result<u64, String>> = futures_util::stream::iter(files)
            .map(|rel| {
                let store = store.clone();
                let source = t.dir.join(&rel);
                let location = rel.split('/').fold(prefix.clone(), |p, part| p.child(part));
                async move { put(store, &source, location).await }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        total(results)
    })?;
    log(&format!(
        "uploaded to {}: {}",
        t.url,
        moved.describe(started)
    ));
    Ok(moved)
}

/// One file streamed to an object (multipart past the buffer, so a large
/// file is never held whole).
async fn put(
    store: Arc<dyn ObjectStore>,
    source: &Path,
    location: StorePath,
) -> Result<u64, String> {
    let file = tokio::fs::File::open(source)
        .await
        .map_err(|e| format!("cannot read {}: {e}", source.display()))?;
    let mut writer =
        object_store::buffered::BufWriter::with_capacity(store, location.clone(), PART_BYTES)
            .with_max_concurrency(PARTS_IN_FLIGHT);
    // Large reads: each read of a tokio file is a trip to a blocking thread.
    let mut file = tokio::io::BufReader::with_capacity(READ_BYTES, file);
    let bytes = tokio::io::copy_buf(&mut file, &mut writer)
        .await
        .map_err(|e| format!("cannot upload {} to {location}: {e}", source.display()))?;
    writer
        .shutdown()
        .await
        .map_err(|e| format!("cannot upload {} to {location}: {e}", source.display()))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_for_what_they_are_used_for() {
        assert_eq!(check_url("s3://bucket/data", true), Ok(()));
        assert_eq!(check_url("https://example.com/a.tar", false), Ok(()));
        assert!(
            check_url("https://example.com/a.tar", true)
                .unwrap_err()
                .contains("read, not written")
        );
        assert!(
            check_url("ftp://host/x", false)
                .unwrap_err()
                .contains("not a data URL")
        );
        assert!(check_url("not a url", false).is_err());
    }

    #[test]
    fn a_round_trip_through_a_shared_file_system_keeps_what_the_regex_matches() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir_all(out.join("sub")).unwrap();
        std::fs::write(out.join("model.bin"), vec![7u8; 100_000]).unwrap();
        std::fs::write(out.join("sub/notes.txt"), "hello").unwrap();
        std::fs::write(out.join("skip.log"), "no").unwrap();
        let store = tmp.path().join("store");
        std::fs::create_dir_all(&store).unwrap();
        let url = format!("file://{}/run1", store.display());
        let lines = std::cell::RefCell::new(Vec::new());
        let log = |l: &str| lines.borrow_mut().push(l.to_string());
        let up = Transfer {
            url: url.clone(),
            regex: Some(r"\.(bin|txt)$".into()),
            dir: out,
            credential: None,
        };
        assert_eq!(
            upload(&up, &log).unwrap(),
            Moved {
                files: 2,
                bytes: 100_005
            }
        );
        assert!(store.join("run1/sub/notes.txt").exists());
        assert!(!store.join("run1/skip.log").exists());
        let back = tmp.path().join("in");
        let down = Transfer {
            url,
            regex: Some("notes".into()),
            dir: back.clone(),
            credential: None,
        };
        assert_eq!(download(&down, &log).unwrap().files, 1);
        assert_eq!(
            std::fs::read_to_string(back.join("sub/notes.txt")).unwrap(),
            "hello"
        );
        assert!(!back.join("model.bin").exists());
        assert!(
            lines.borrow().iter().any(|l| l.contains("2 files")),
            "{:?}",
            lines.borrow()
        );
    }

    #[test]
    fn a_credential_never_prints_its_secret() {
        let c = DataCredential {
            access_key_id: "AKIA".into(),
            access_key: "s3cr3t".into(),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }
}
