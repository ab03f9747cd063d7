//! Reading: entries by location, blocks by hash and by index range.

use super::*;

impl Inner {
    /// The bytes of one entry.
    pub(crate) fn read_entry(&self, file: &FileRef, loc: Loc) -> Result<Vec<u8>> {
        read_exact(&**file, u64::from(loc.off), loc.len as usize, &|| {
            self.dir.seg(loc.seg).display().to_string()
        })
    }

    pub(crate) fn retrieve(&self, hash: &BlockHash) -> Result<Option<Block>> {
        let (file, loc) = {
            let st = read_state(&self.state);
            let Some((_, e)) = st.index.get(hash)? else {
                return Ok(None);
            };
            (self.file_of(&st, e.loc.seg)?, e.loc)
        };
        format::decode_entry(&self.read_entry(&file, loc)?, hash).map(Some)
    }

    pub(super) fn file_of(&self, st: &State, seg: u64) -> Result<FileRef> {
        st.files.get(&seg).cloned().ok_or_else(|| {
            StorageError::corrupted(format!("fs: segment {seg} is indexed but not open"))
        })
    }

    /// Blocks with `start <= index <= end`. Neighbouring entries are read with one
    /// read each run (blocks of a chain usually sit next to each other).
    pub(crate) fn range(&self, start: u64, end: u64) -> Result<Vec<Block>> {
        let wanted: Vec<(BlockHash, Loc, FileRef)> = {
            let st = read_state(&self.state);
            st.index
                .range(start, end)?
                .into_iter()
                .map(|(_, e)| Ok((e.hash, e.loc, self.file_of(&st, e.loc.seg)?)))
                .collect::<Result<_>>()?
        };
        let mut out = Vec::with_capacity(wanted.len());
        let mut i = 0;
        while i < wanted.len() {
            // Extend the run while the next entry follows closely in the same file.
            let off = |k: usize| u64::from(wanted[k].1.off);
            let stop = |k: usize| off(k) + u64::from(wanted[k].1.len);
            let (seg, first) = (wanted[i].1.seg, off(i));
            let mut j = i + 1;
            let mut run_end = stop(i);
            while j < wanted.len()
                && wanted[j].1.seg == seg
                && off(j) >= run_end
                && off(j) - run_end <= 4096
                && stop(j) - first <= 8 << 20
            {
                run_end = stop(j);
                j += 1;
            }
            let bytes = read_exact(&*wanted[i].2, first, (run_end - first) as usize, &|| {
                self.dir.seg(seg).display().to_string()
            })?;
            for (k, (hash, loc, _)) in wanted[i..j].iter().enumerate() {
                let at = (off(i + k) - first) as usize;
                out.push(format::decode_entry(
                    &bytes[at..at + loc.len as usize],
                    hash,
                )?);
            }
            i = j;
        }
        Ok(out)
    }
}
