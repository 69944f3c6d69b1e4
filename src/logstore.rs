//! The log store (SPEC §11): where attempts' logs are kept after their pods are gone, behind
//! one interface over [`object_store`] with two backends, `file:///dir` and
//! `s3://bucket/prefix` (any S3-compatible service; endpoint from `AWS_ENDPOINT_URL`,
//! credentials from the standard `AWS_*` variables).
//!
//! Logs are streamed in and out: an upload holds one part (a few MiB for S3, whose parts
//! cannot be smaller) in memory, never the whole log.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::{AsyncRead, AsyncWriteExt};

/// Something the log store refused or could not do, naming the store and the object.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    /// The URL cannot name a store.
    #[error("log store {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A call to the store failed.
    #[error("log store {store}: {operation} {key:?} failed: {source}")]
    Call {
        /// The store's URL.
        store: String,
        /// What was being done (upload, read, list, delete).
        operation: &'static str,
        /// The key (or prefix) it was done to.
        key: String,
        /// What the store said.
        #[source]
        source: Box<object_store::Error>,
    },
    /// Reading the log to upload failed (the pod's log stream broke).
    #[error("log store {store}: upload of {key:?} failed reading the log: {source}")]
    Read {
        /// The store's URL.
        store: String,
        /// The key being written.
        key: String,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
}

/// Upload part size for S3: its smallest allowed part.
const S3_PART: usize = 5 * 1024 * 1024;

/// Upload buffer for files, which take any part size.
const FILE_PART: usize = 256 * 1024;

/// A log store opened from its URL.
pub struct LogStore {
    store: Arc<dyn ObjectStore>,
    prefix: Option<Path>,
    url: String,
    part: usize,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("url", &self.url).finish()
    }
}

impl LogStore {
    /// Opens `file:///dir` (created if missing) or `s3://bucket[/prefix]`. Nothing is
    /// contacted yet: see [`LogStore::check`].
    pub fn open(url: &str) -> Result<LogStore, LogStoreError> {
        LogStore::open_with(url, &[])
    }

    /// [`LogStore::open`] with S3 settings given as `(key, value)` over those of the
    /// environment, keys spelt as the variables are (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`).
    pub fn open_with(url: &str, settings: &[(&str, &str)]) -> Result<LogStore, LogStoreError> {
        let bad = |reason: String| LogStoreError::Url {
            url: url.to_string(),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(format!("not a URL: {e}")))?;
        let prefix = parsed.path().trim_matches('/');
        match parsed.scheme() {
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|()| bad("a file:// URL needs an absolute path".to_string()))?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
                let store = LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| bad(e.to_string()))?
                    .with_automatic_cleanup(true);
                Ok(LogStore {
                    store: Arc::new(store),
                    prefix: None,
                    url: url.to_string(),
                    part: FILE_PART,
                })
            }
            "s3" => {
                // reqwest is built without a provider of its own: it takes the process's,
                // which is ring (installing it twice is harmless).
                let _ = rustls::crypto::ring::default_provider().install_default();
                if parsed.host_str().is_none_or(str::is_empty) {
                    return Err(bad("an s3:// URL needs a bucket: s3://bucket/prefix".into()));
                }
                let mut builder = AmazonS3Builder::from_env().with_url(url);
                for (key, value) in settings {
                    let key: AmazonS3ConfigKey = key
                        .to_ascii_lowercase()
                        .parse()
                        .map_err(|e: object_store::Error| bad(e.to_string()))?;
                    builder = builder.with_config(key, *value);
                }
                let plain_http = builder
                    .get_config_value(&AmazonS3ConfigKey::Endpoint)
                    .is_some_and(|e| e.starts_with("http://"));
                if plain_http {
                    builder = builder.with_allow_http(true);
                }
                // A few quick retries: the archiver retries on its own schedule, and a
                // `charon logs` facing a store that is down should say so within seconds.
                builder = builder.with_retry(object_store::RetryConfig {
                    max_retries: 2,
                    retry_timeout: std::time::Duration::from_secs(10),
                    ..Default::default()
                });
                let store = builder.build().map_err(|e| bad(e.to_string()))?;
                Ok(LogStore {
                    store: Arc::new(store),
                    prefix: (!prefix.is_empty()).then(|| Path::from(prefix)),
                    url: url.to_string(),
                    part: S3_PART,
                })
            }
            other => Err(bad(format!(
                "unsupported scheme {other:?}: use file:///dir or s3://bucket/prefix"
            ))),
        }
    }

    /// The URL it was opened from.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, key: &str) -> Path {
        let key = Path::from(key);
        match &self.prefix {
            Some(prefix) => prefix.parts().chain(key.parts()).collect(),
            None => key,
        }
    }

    /// The error of `operation` on `key`, for `map_err` (also on a stream's every item).
    fn error(
        &self,
        operation: &'static str,
        key: &str,
    ) -> impl Fn(object_store::Error) -> LogStoreError + Send + 'static {
        let (store, key) = (self.url.clone(), key.to_string());
        move |source| LogStoreError::Call {
            store: store.clone(),
            operation,
            key: key.clone(),
            source: Box::new(source),
        }
    }

    /// Reaches the store once (a listing of at most one object), so that a missing bucket or
    /// wrong credentials are reported when the operator starts, not at the first archive.
    pub async fn check(&self) -> Result<(), LogStoreError> {
        let mut list = self.store.list(self.prefix.as_ref());
        match list.next().await {
            Some(Err(e)) => Err(self.error("list", "")(e)),
            _ => Ok(()),
        }
    }

    /// Streams `log` into `key`, replacing what was there; returns the bytes written.
    pub async fn put(
        &self,
        key: &str,
        mut log: impl AsyncRead + Unpin,
    ) -> Result<u64, LogStoreError> {
        let mut writer = BufWriter::with_capacity(self.store.clone(), self.path(key), self.part)
            .with_max_concurrency(1);
        let copied = tokio::io::copy(&mut log, &mut writer).await;
        let finished = match copied {
            Ok(n) => writer.shutdown().await.map(|()| n),
            Err(e) => {
                let _ = writer.abort().await;
                return Err(LogStoreError::Read {
                    store: self.url.clone(),
                    key: key.to_string(),
                    source: e,
                });
            }
        };
        finished.map_err(|e| {
            // BufWriter reports store errors as io errors wrapping the store's.
            let source = match e.downcast::<object_store::Error>() {
                Ok(e) => e,
                Err(e) => object_store::Error::Generic {
                    store: "upload",
                    source: Box::new(e),
                },
            };
            self.error("upload", key)(source)
        })
    }

    /// The log at `key`, streamed; `None` when there is none.
    pub async fn get(
        &self,
        key: &str,
    ) -> Result<Option<BoxStream<'static, Result<Bytes, LogStoreError>>>, LogStoreError> {
        match self.store.get(&self.path(key)).await {
            Ok(found) => Ok(Some(
                found.into_stream().map_err(self.error("read", key)).boxed(),
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("read", key)(e)),
        }
    }

    /// Whether there is an object at `key`.
    pub async fn exists(&self, key: &str) -> Result<bool, LogStoreError> {
        match self.store.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error("read", key)(e)),
        }
    }

    /// Every key under `prefix` (relative to the store's own prefix), in no order.
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>, LogStoreError> {
        let root = self.path(prefix.trim_end_matches('/'));
        let skip = self.prefix.as_ref().map_or(0, |p| p.parts().count());
        self.store
            .list(Some(&root))
            .map_ok(|meta| {
                meta.location
                    .parts()
                    .skip(skip)
                    .map(|p| p.as_ref().to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .try_collect()
            .await
            .map_err(self.error("list", prefix))
    }

    /// Deletes every object under `prefix`; returns how many.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize, LogStoreError> {
        let keys = self.keys(prefix).await?;
        for key in &keys {
            match self.store.delete(&self.path(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.error("delete", key)(e)),
            }
        }
        Ok(keys.len())
    }

    /// The namespace and instance uid of every instance with a log in the store under
    /// `namespace` (or all namespaces).
    pub async fn owners(
        &self,
        namespace: Option<&str>,
    ) -> Result<BTreeSet<(String, String)>, LogStoreError> {
        let keys = self.keys(namespace.unwrap_or("")).await?;
        Ok(keys
            .iter()
            .filter_map(|k| charon_core::archive::key_owner(k))
            .map(|(ns, uid)| (ns.to_string(), uid.to_string()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_problem() {
        let err = |url: &str| LogStore::open(url).unwrap_err().to_string();
        assert!(
            err("ftp://x/y").contains("unsupported scheme \"ftp\""),
            "{}",
            err("ftp://x/y")
        );
        assert!(err("not a url").contains("not a URL"));
        assert!(err("s3:///prefix").contains("needs a bucket"));
        assert!(err("file://relative/dir").contains("log store"));
    }

    #[tokio::test]
    async fn a_file_store_round_trips_lists_and_deletes() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let url = url::Url::from_directory_path(dir.path()).expect("absolute");
        let store = LogStore::open(url.as_str()).expect("opens");
        store.check().await.expect("reachable");
        let log = "line 1\nline 2\n".repeat(50_000);
        let n = store.put("ns/u1/1.log", log.as_bytes()).await.expect("put");
        assert_eq!(n, log.len() as u64);
        store.put("ns/u1/2.log", &b"two\n"[..]).await.expect("put");
        store.put("other/u2/1.log", &b"x"[..]).await.expect("put");
        let read: Vec<Bytes> = store
            .get("ns/u1/1.log")
            .await
            .expect("get")
            .expect("there")
            .try_collect()
            .await
            .expect("read");
        assert_eq!(read.concat(), log.as_bytes());
        assert!(store.get("ns/u1/9.log").await.expect("get").is_none());
        assert!(store.exists("ns/u1/2.log").await.expect("head"));
        let owners = store.owners(None).await.expect("owners");
        assert_eq!(
            owners.into_iter().collect::<Vec<_>>(),
            [("ns".into(), "u1".into()), ("other".into(), "u2".into())]
        );
        assert_eq!(store.delete_prefix("ns/u1/").await.expect("delete"), 2);
        assert!(!store.exists("ns/u1/1.log").await.expect("head"));
        assert_eq!(store.owners(Some("ns")).await.expect("owners").len(), 0);
        // The same key twice is one object, the second's content.
        store.put("ns/u3/1.log", &b"first"[..]).await.expect("put");
        store.put("ns/u3/1.log", &b"again"[..]).await.expect("put");
        assert_eq!(store.keys("ns/u3/").await.expect("keys"), ["ns/u3/1.log"]);
    }
}
