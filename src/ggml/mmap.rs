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
