//! Requests to the object store: each call under its deadline, errors typed
//! with their cause, and the retry helpers.

use super::*;

/// Result of a conditional PUT.
pub(crate) enum Put {
    Done(UpdateVersion),
    /// Create-if-absent found the object, or `If-Match` found another version.
    Lost,
}

/// ETags compare without surrounding quotes: some servers quote them in one
/// response and not in another.
pub(crate) fn same_etag(a: &Option<String>, b: &Option<String>) -> bool {
    let norm = |e: &Option<String>| e.as_deref().map(|s| s.trim_matches('"').to_owned());
    norm(a) == norm(b)
}

impl Inner {
    /// Runs one store call under the call deadline.
    pub(crate) async fn call<T>(
        &self,
        op: &str,
        path: &Path,
        fut: impl Future<Output = object_store::Result<T>>,
    ) -> Result<object_store::Result<T>> {
        let after = self.options.call_deadline();
        tokio::time::timeout(after, fut)
            .await
            .map_err(|_| StorageError::Timeout {
                operation: format!("object store {op} of {path} on {}", self.describe),
                after,
            })
    }

    pub(crate) fn fail(&self, op: &str, path: &Path, e: object_store::Error) -> StorageError {
        use object_store::Error as E;
        let context = format!("{op} of {path} on {}", self.describe);
        match e {
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                StorageError::Configuration(format!("object store refused access: {context}: {e}"))
            }
            E::NotImplemented { .. } | E::NotSupported { .. } => {
                StorageError::backend(NAME, context, ErrorStatus::Permanent, e)
            }
            // object_store's own retries are exhausted: 5xx, connection and
            // timeout errors persisted.
            _ => StorageError::backend(NAME, context, ErrorStatus::Persistent, e),
        }
    }

    pub(crate) async fn get(&self, path: &Path) -> Result<Option<(Bytes, UpdateVersion)>> {
        let r = self
            .call("GET", path, async {
                let got = self.store.get(path).await?;
                let version = UpdateVersion {
                    e_tag: got.meta.e_tag.clone(),
                    version: got.meta.version.clone(),
                };
                Ok((got.bytes().await?, version))
            })
            .await?;
        match r {
            Ok(v) => Ok(Some(v)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("GET", path, e)),
        }
    }

    /// Ranges of one segment. A segment too short for a range its index entries
    /// name was cut (damage), which is [`StorageError::Corrupted`]; stores report
    /// such a request only as a generic error, so its size is checked then.
    pub(crate) async fn get_ranges(
        &self,
        path: &Path,
        ranges: &[Range<u64>],
    ) -> Result<Option<Vec<Bytes>>> {
        let end = ranges.iter().map(|r| r.end).max().unwrap_or(0);
        let truncated = |size: u64| {
            StorageError::corrupted(format!(
                "object store: segment {path} on {} is {size} bytes, but its index entries \
                 reach byte {end} (truncated)",
                self.describe
            ))
        };
        match self
            .call("ranged GET", path, self.store.get_ranges(path, ranges))
            .await?
        {
            Ok(v) => {
                if v.iter()
                    .zip(ranges)
                    .any(|(b, r)| b.len() as u64 != r.end - r.start)
                {
                    return Err(truncated(v.iter().map(|b| b.len() as u64).sum()));
                }
                Ok(Some(v))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => match self.call("HEAD", path, self.store.head(path)).await? {
                Ok(meta) if meta.size < end => Err(truncated(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                _ => Err(self.fail("ranged GET", path, e)),
            },
        }
    }

    pub(crate) async fn put(&self, path: &Path, bytes: Vec<u8>, mode: PutMode) -> Result<Put> {
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        let payload = PutPayload::from(bytes);
        match self
            .call("PUT", path, self.store.put_opts(path, payload, opts))
            .await?
        {
            Ok(r) => Ok(Put::Done(UpdateVersion {
                e_tag: r.e_tag,
                version: r.version,
            })),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(Put::Lost),
            Err(e) => Err(self.fail("PUT", path, e)),
        }
    }

    pub(crate) async fn delete(&self, path: &Path) -> Result<()> {
        match self.call("DELETE", path, self.store.delete(path)).await? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail("DELETE", path, e)),
        }
    }

    pub(crate) async fn list(&self, dir: &str) -> Result<Vec<ObjectMeta>> {
        let path = Path::from(dir);
        match self
            .call(
                "LIST",
                &path,
                self.store.list(Some(&path)).try_collect::<Vec<_>>(),
            )
            .await?
        {
            Ok(v) => Ok(v),
            Err(e) => Err(self.fail("LIST", &path, e)),
        }
    }
}

/// Runs `futs` at most `limit` at a time, results in completion order. The
/// futures are built before streaming: a stream that holds a closure over
/// borrowed items fails the compiler's lifetime check inside `async_trait`
/// methods.
pub(crate) fn bounded<F: Future>(
    futs: impl Iterator<Item = F>,
    limit: usize,
) -> impl futures::Stream<Item = F::Output> {
    futures::stream::iter(futs.collect::<Vec<_>>()).buffer_unordered(limit)
}

/// The pauses before retrying a lost compare-and-swap: short, growing and
/// jittered, so two writers do not keep colliding in lockstep.
pub(crate) fn cas_delays() -> impl Iterator<Item = Duration> + Send {
    storage_core::raw::retry_delays(
        Duration::from_millis(5),
        Duration::from_millis(160),
        crate::CAS_ATTEMPTS as usize,
    )
}
