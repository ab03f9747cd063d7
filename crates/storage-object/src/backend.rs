//! The backend type: opening, its own methods, and its engine work beneath the
//! shared layer.

use super::*;

impl std::fmt::Debug for ObjectStoreBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreBackend")
            .field("store", &self.inner.describe)
            .field("single_writer", &self.inner.single_writer)
            .finish_non_exhaustive()
    }
}

impl ObjectStoreBackend {
    /// Opens the chain at `config.url` (see [`ObjectStoreConfig`]) and reads its
    /// index pages.
    pub async fn open(config: ObjectStoreConfig) -> Result<Self> {
        let built = config.build()?;
        let describe = config.url.clone();
        Self::start(
            built.store,
            built.prefix,
            describe,
            config.options,
            built.single_writer,
        )
        .await
    }

    /// Opens the chain under `prefix` in any object store that supports
    /// conditional PUTs (create-if-absent and `If-Match`), e.g. S3 or
    /// object_store's in-memory store.
    pub async fn with_store(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        options: ObjectOptions,
    ) -> Result<Self> {
        let describe = format!("{store}/{prefix}");
        Self::start(store, parse_prefix(prefix)?, describe, options, false).await
    }

    /// Like [`ObjectStoreBackend::with_store`] for stores without conditional
    /// updates (object_store's local-file store): updates are serialised inside
    /// this instance, so only one process may write the chain at a time.
    pub async fn with_store_single_writer(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        options: ObjectOptions,
    ) -> Result<Self> {
        let describe = format!("{store}/{prefix}");
        Self::start(store, parse_prefix(prefix)?, describe, options, true).await
    }

    async fn start(
        store: Arc<dyn ObjectStore>,
        prefix: Path,
        describe: String,
        options: ObjectOptions,
        single_writer: bool,
    ) -> Result<Self> {
        options.validate()?;
        let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
            store
        } else {
            Arc::new(PrefixStore::new(store, prefix))
        };
        let backend = Self {
            inner: Arc::new(Inner {
                store,
                describe,
                options,
                single_writer,
                view: Mutex::new(View::default()),
                page_locks: Mutex::new(HashMap::new()),
                head_lock: AsyncMutex::new(()),
                in_flight: Mutex::new(HashSet::new()),
                gate: Gate::new(),
            }),
        };
        let span = op_span(NAME, "open");
        in_span_async(span, async {
            // A GET first: object_store types a refused GET (wrong credentials:
            // `Configuration`), where a refused LIST is only a generic error.
            let head = backend.inner.read_head().await?;
            backend.inner.refresh().await?;
            // A chain exists once its head object does (written when it is
            // created) or, for chains from before that, once it has pages.
            let exists = head.is_some() || !backend.inner.view().pages.is_empty();
            let mode = backend.inner.options.mode;
            mode.require_existing(NAME, exists, || backend.inner.describe.clone())?;
            if !exists {
                // Create-if-absent: a writer that got there first created it.
                backend
                    .inner
                    .put(&Path::from(HEAD_OBJECT), encode_head(None), PutMode::Create)
                    .await?;
            }
            Ok(())
        })
        .await?;
        Ok(backend)
    }

    /// The options in use.
    pub fn options(&self) -> &ObjectOptions {
        &self.inner.options
    }

    /// The store, scoped to this chain's prefix (for tools and tests that inspect
    /// or repair objects).
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.inner.store.clone()
    }

    /// Where block `hash` is stored: its segment (relative to the prefix) and byte
    /// range; `None` if it is not stored.
    pub async fn locate(&self, hash: &BlockHash) -> Result<Option<(Path, Range<u64>)>> {
        self.inner.check_open()?;
        Ok(self
            .inner
            .lookup_fresh(hash)
            .await?
            .map(|e| (e.segment.path(), e.range())))
    }
}

fn parse_prefix(prefix: &str) -> Result<Path> {
    Path::parse(prefix.trim_matches('/'))
        .map_err(|e| StorageError::Configuration(format!("object store prefix {prefix:?}: {e}")))
}

impl Engine for ObjectStoreBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn gate(&self) -> &Gate {
        &self.inner.gate
    }

    fn supported(&self) -> Capabilities {
        // A batch spans several conditional writes (see the crate docs), and
        // object stores keep no free space to return.
        let caps = Capabilities::new().persistent();
        if self.inner.options.mode == OpenMode::ReadOnly {
            caps.read_only()
        } else {
            caps
        }
    }

    fn max_payload_bytes(&self) -> usize {
        self.inner.options.max_payload_bytes
    }

    async fn write_blocks(&self, blocks: &[Block]) -> Result<()> {
        self.inner.store_many(blocks).await.map(|_| ())
    }

    async fn read_block(&self, hash: &BlockHash) -> Result<Option<Block>> {
        async {
            let Some(entry) = self.inner.lookup_fresh(hash).await? else {
                return Ok(None);
            };
            Ok(self.inner.read_entries(&[entry]).await?.pop().flatten())
        }
        .await
    }

    async fn remove_block(&self, hash: &BlockHash) -> Result<bool> {
        async {
            let Some(entry) = self.inner.lookup_fresh(hash).await? else {
                return Ok(false);
            };
            let index = entry.meta.index;
            let mut removed = false;
            self.inner
                .update_page(page_of(index), |page| {
                    removed = page
                        .entries
                        .get(&index)
                        .is_some_and(|e| e.meta.hash == *hash);
                    if !removed {
                        return Ok(None);
                    }
                    let mut next = page.clone();
                    next.entries.remove(&index);
                    Ok(Some(next))
                })
                .await?;
            if removed {
                // Entry first, then the head: a crash between leaves a head naming
                // a missing block, which reads as no head.
                let hash = *hash;
                self.inner
                    .update_head(|h| (h == Some(hash)).then_some(None))
                    .await?;
            }
            Ok(removed)
        }
        .await
    }

    async fn has_block(&self, hash: &BlockHash) -> Result<bool> {
        async { Ok(self.inner.lookup_fresh(hash).await?.is_some()) }.await
    }

    async fn read_blocks(&self, hashes: &[BlockHash]) -> Result<Vec<Option<Block>>> {
        async {
            let mut found: Vec<Option<Entry>> = {
                let view = self.inner.view();
                hashes.iter().map(|h| view.lookup(h)).collect()
            };
            if found.iter().any(Option::is_none) {
                self.inner.refresh().await?;
                let view = self.inner.view();
                for (slot, h) in found.iter_mut().zip(hashes) {
                    if slot.is_none() {
                        *slot = view.lookup(h);
                    }
                }
            }
            let wanted: Vec<Entry> = found.iter().flatten().cloned().collect();
            let mut blocks = self.inner.read_entries(&wanted).await?.into_iter();
            Ok(found
                .iter()
                .map(|f| f.as_ref().and_then(|_| blocks.next().flatten()))
                .collect())
        }
        .await
    }

    async fn list(&self, options: &ListOptions) -> Result<Vec<BlockMetadata>> {
        async {
            self.inner.refresh().await?;
            let Some((lo, hi)) = options.index_range() else {
                return Ok(Vec::new());
            };
            let view = self.inner.view();
            let pages = view.pages.range(page_of(lo)..=page_of(hi));
            let skip = usize::try_from(options.offset.unwrap_or(0)).unwrap_or(usize::MAX);
            let take = usize::try_from(options.limit.unwrap_or(u64::MAX)).unwrap_or(usize::MAX);
            // Pages are in index order, so index orders stream and stop at `limit`;
            // timestamp order sorts the matches.
            let out = match options.order {
                SortOrder::Ascending | SortOrder::ByIndex => pages
                    .flat_map(|(_, c)| c.page.entries.range(lo..=hi).map(|(_, e)| &e.meta))
                    .filter(|m| options.matches(m))
                    .skip(skip)
                    .take(take)
                    .cloned()
                    .collect(),
                SortOrder::Descending => pages
                    .rev()
                    .flat_map(|(_, c)| c.page.entries.range(lo..=hi).rev().map(|(_, e)| &e.meta))
                    .filter(|m| options.matches(m))
                    .skip(skip)
                    .take(take)
                    .cloned()
                    .collect(),
                SortOrder::ByTimestamp => options.apply(
                    pages
                        .flat_map(|(_, c)| c.page.entries.range(lo..=hi).map(|(_, e)| &e.meta))
                        .filter(|m| options.matches(m))
                        .cloned(),
                ),
            };
            Ok(out)
        }
        .await
    }

    async fn count(&self) -> Result<u64> {
        async {
            self.inner.refresh().await?;
            Ok(self.inner.view().totals().count)
        }
        .await
    }

    async fn head(&self) -> Result<Option<BlockHash>> {
        async {
            let Some((Some(head), _)) = self.inner.read_head().await? else {
                return Ok(None);
            };
            Ok(self.inner.lookup_fresh(&head).await?.map(|_| head))
        }
        .await
    }

    async fn write_head(&self, hash: &BlockHash) -> Result<()> {
        async {
            if self.inner.lookup_fresh(hash).await?.is_none() {
                return Err(StorageError::BlockNotFound { hash: *hash });
            }
            let hash = *hash;
            self.inner
                .update_head(|h| (h != Some(hash)).then_some(Some(hash)))
                .await
        }
        .await
    }

    async fn read_range(&self, start: u64, end: u64) -> Result<Vec<Block>> {
        async {
            self.inner.refresh().await?;
            let entries: Vec<Entry> = {
                let view = self.inner.view();
                view.pages
                    .range(page_of(start)..=page_of(end))
                    .flat_map(|(_, c)| c.page.entries.range(start..=end).map(|(_, e)| e.clone()))
                    .collect()
            };
            Ok(self
                .inner
                .read_entries(&entries)
                .await?
                .into_iter()
                .flatten()
                .collect())
        }
        .await
    }

    async fn run_compaction(&self) -> Result<()> {
        self.inner.compact().await
    }

    async fn run_vacuum(&self) -> Result<()> {
        // Deleted objects are freed by the store itself; there is nothing to return.
        async { Err(StorageError::unsupported(NAME, "vacuum")) }.await
    }

    async fn stats(&self) -> Result<StorageStats> {
        async {
            self.inner.refresh().await?;
            let view = self.inner.view();
            let t = view.totals();
            let values = [
                ("index_pages", view.pages.len() as f64),
                ("page_slots", PAGE_SLOTS as f64),
                ("stored_bytes", t.stored_bytes as f64),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            Ok(StorageStats {
                total_blocks: t.count,
                total_size_bytes: t.size_bytes,
                oldest_block: t.time_range.map(|(lo, _)| system_time_from_unix_nanos(lo)),
                newest_block: t.time_range.map(|(_, hi)| system_time_from_unix_nanos(hi)),
                backend_specific: BackendStats::Other {
                    backend: NAME.into(),
                    values,
                },
            })
        }
        .await
    }

    async fn shutdown(&self) -> Result<()> {
        // Every write is acknowledged only once the store has it: nothing to flush.
        Ok(())
    }
}
