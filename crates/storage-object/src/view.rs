//! The page view: what this instance knows of the index pages, refreshed from
//! the store, and the compare-and-swap that changes a page.

use super::*;

impl View {
    pub(crate) fn entry(&self, index: u64) -> Option<&Entry> {
        self.pages.get(&page_of(index))?.page.entries.get(&index)
    }

    pub(crate) fn lookup(&self, hash: &BlockHash) -> Option<Entry> {
        let index = *self.by_hash.get(hash)?;
        self.entry(index).filter(|e| e.meta.hash == *hash).cloned()
    }

    pub(crate) fn etag(&self, page: u64) -> Option<Option<String>> {
        self.pages.get(&page).map(|c| c.version.e_tag.clone())
    }

    /// Replaces (or with `None` drops) a page and its hashes.
    pub(crate) fn install(&mut self, number: u64, page: Option<Cached>) {
        if let Some(old) = self.pages.remove(&number) {
            for (index, e) in &old.page.entries {
                if self.by_hash.get(&e.meta.hash) == Some(index) {
                    self.by_hash.remove(&e.meta.hash);
                }
            }
        }
        if let Some(new) = page {
            for (index, e) in &new.page.entries {
                self.by_hash.insert(e.meta.hash, *index);
            }
            self.pages.insert(number, new);
        }
    }

    pub(crate) fn totals(&self) -> PageTotals {
        let mut all = PageTotals::default();
        for c in self.pages.values() {
            let t = c.totals;
            all.count += t.count;
            all.size_bytes += t.size_bytes;
            all.stored_bytes += t.stored_bytes;
            all.time_range = match (all.time_range, t.time_range) {
                (None, r) | (r, None) => r,
                (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
            };
        }
        all
    }
}

impl Cached {
    pub(crate) fn new(version: UpdateVersion, page: Page) -> Self {
        let totals = page.totals();
        Self {
            version,
            page: Arc::new(page),
            totals,
        }
    }
}

impl Inner {
    pub(crate) async fn fetch_page(&self, number: u64) -> Result<Option<Cached>> {
        let path = page_path(number);
        Ok(match self.get(&path).await? {
            None => None,
            Some((bytes, version)) => Some(Cached::new(version, Page::decode(number, &bytes)?)),
        })
    }

    /// Brings the view up to date with the store: one LIST of `idx/`, then a GET
    /// of each page whose ETag differs from the one held. A page is replaced only
    /// if this instance did not change it meanwhile (its own writes are newer).
    pub(crate) async fn refresh(&self) -> Result<()> {
        let listed = self.list(PAGES_DIR).await?;
        let stale: Vec<(u64, Option<Option<String>>)> = {
            let view = self.view();
            let mut seen = HashSet::with_capacity(listed.len());
            let mut stale = Vec::new();
            for m in &listed {
                let Some(n) = page_from_path(&m.location) else {
                    continue;
                };
                seen.insert(n);
                let held = view.etag(n);
                if !held.as_ref().is_some_and(|e| same_etag(e, &m.e_tag)) {
                    stale.push((n, held));
                }
            }
            // Pages we hold that the listing lacks: check each (never dropped on
            // the listing's word, which may predate our own create).
            stale.extend(
                view.pages
                    .iter()
                    .filter(|(n, _)| !seen.contains(n))
                    .map(|(n, c)| (*n, Some(c.version.e_tag.clone()))),
            );
            stale
        };
        let fetches = stale.into_iter().map(|(n, held)| async move {
            Ok::<_, StorageError>((n, held, self.fetch_page(n).await?))
        });
        let fetched: Vec<_> = bounded(fetches, self.options.parallelism)
            .try_collect()
            .await?;
        let mut view = self.view();
        for (n, held, page) in fetched {
            if view.etag(n) == held {
                view.install(n, page);
            }
        }
        Ok(())
    }

    pub(crate) fn page_lock(&self, number: u64) -> Arc<AsyncMutex<()>> {
        self.page_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(number)
            .or_default()
            .clone()
    }

    /// Changes page `number` with compare-and-swap. `change` sees the current page
    /// (empty if absent) and returns the new one, or `None` to leave it. If another
    /// writer changed the page first, it is read again and `change` runs again.
    pub(crate) async fn update_page(
        &self,
        number: u64,
        mut change: impl FnMut(&Page) -> Result<Option<Page>>,
    ) -> Result<()> {
        let lock = self.page_lock(number);
        let _queued = lock.lock().await;
        let path = page_path(number);
        let mut delays = cas_delays();
        for attempt in 0..CAS_ATTEMPTS {
            let held = self.view().pages.get(&number).cloned();
            let empty = Page::default();
            let Some(next) = change(held.as_ref().map_or(&empty, |c| &c.page))? else {
                return Ok(());
            };
            let mode = self.cas_mode(&path, held.as_ref().map(|c| &c.version))?;
            match self.put(&path, next.encode(number), mode).await? {
                Put::Done(version) => {
                    self.view()
                        .install(number, Some(Cached::new(version, next)));
                    return Ok(());
                }
                Put::Lost => {
                    // Another writer got there first: read its version, retry.
                    let fresh = self.fetch_page(number).await?;
                    self.view().install(number, fresh);
                    tracing::debug!(page = number, attempt, "page changed under us; retrying");
                    if let Some(pause) = delays.next() {
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
        Err(self.gave_up(&path))
    }

    /// How to replace `path`, read at version `held`: create-if-absent when it was
    /// absent, `If-Match` on its version otherwise (a plain overwrite for a single
    /// writer).
    pub(crate) fn cas_mode(&self, path: &Path, held: Option<&UpdateVersion>) -> Result<PutMode> {
        Ok(match held {
            None => PutMode::Create,
            Some(_) if self.single_writer => PutMode::Overwrite,
            Some(v) if v.e_tag.is_none() && v.version.is_none() => {
                return Err(StorageError::backend_msg(
                    NAME,
                    format!(
                        "updating {path}: {} returned no ETag or version, so conditional \
                         updates are impossible (use with_store_single_writer for one writer)",
                        self.describe
                    ),
                    ErrorStatus::Permanent,
                ));
            }
            Some(v) => PutMode::Update(v.clone()),
        })
    }

    /// A compare-and-swap on `path` lost [`CAS_ATTEMPTS`] times in a row.
    pub(crate) fn gave_up(&self, path: &Path) -> StorageError {
        StorageError::backend_msg(
            NAME,
            format!(
                "updating {path} on {}: it kept changing; gave up after {CAS_ATTEMPTS} attempts",
                self.describe
            ),
            ErrorStatus::Persistent,
        )
    }

    /// The entry for `hash`, refreshing the view once if it is unknown.
    pub(crate) async fn lookup_fresh(&self, hash: &BlockHash) -> Result<Option<Entry>> {
        if let Some(e) = self.view().lookup(hash) {
            return Ok(Some(e));
        }
        self.refresh().await?;
        Ok(self.view().lookup(hash))
    }
}
