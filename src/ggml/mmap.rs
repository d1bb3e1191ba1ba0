//! Read-only file mapping for the GGUF reader: it lives here because mapping a file is `unsafe` and the crate
//! keeps all `unsafe` inside `crate::ggml`.

use std::fs::File;

pub use memmap2::Mmap;

/// Maps `file` read-only.
pub fn map_readonly(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the map is read-only and outlives no borrow of `file`. memmap2's caveat remains: if another process
    // truncates or rewrites the file while it is mapped, reads may see the new bytes or fault (SIGBUS). Model files
    // are not modified in place by our tools (the GGUF writer renames a finished temporary file over the target).
    unsafe { Mmap::map(file) }
}

/// Drops the process's pages of `map[offset..offset + len]` (rounded inwards to whole pages) with
/// MADV_DONTNEED, e.g. weights that now live in a repacked copy: they leave the resident set and are read from
/// the file again if ever touched.
pub fn release_range(map: &Mmap, offset: usize, len: usize) -> std::io::Result<()> {
    const PAGE: usize = 4096;
    let start = offset.div_ceil(PAGE) * PAGE;
    let end = (offset.saturating_add(len) / PAGE * PAGE).min(map.len());
    if end <= start {
        return Ok(());
    }
    // SAFETY: a read-only shared file mapping: after MADV_DONTNEED its pages read the file's bytes again, so no
    // Rust reference into the map can observe a change (the file is not modified in place; see map_readonly).
    unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) }
}
