//! Incremental detokenization: byte-level BPE tokens can end in the middle of a UTF-8 character (an emoji is often
//! two or three byte tokens), so text is released only once each character is complete.

use super::{Tokenizer, TokenizerError};

/// Turns a stream of token ids into complete UTF-8 text.
///
/// Bytes that could still be the start of a character are held back; bytes that can never become valid UTF-8 are
/// released as U+FFFD (one per maximal invalid sequence, like `String::from_utf8_lossy`) as soon as that is certain.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    pending: Vec<u8>,
    render_special: bool,
}

impl StreamDecoder {
    /// `render_special`: print CONTROL tokens' text (`<|im_end|>`) instead of nothing.
    pub fn new(render_special: bool) -> Self {
        StreamDecoder {
            pending: Vec::new(),
            render_special,
        }
    }

    /// Adds one token; returns the text that is now complete (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        let piece = tokenizer.token_to_piece_bytes(id, self.render_special)?;
        Ok(self.push_bytes(piece))
    }

    /// Adds raw bytes; returns the text that is now complete (possibly empty).
    pub fn push_bytes(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // from_utf8 just said this prefix is valid, so this never falls back.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        // Invalid for sure: replace and keep scanning.
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                        // A truncated but so far valid character: wait for more bytes.
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let start = self.pending.len() - keep;
        self.pending.drain(..start);
        out
    }

    /// Bytes held back waiting for the rest of a character.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Ends the stream: an unfinished character can no longer complete and becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_partial_characters() {
        let mut d = StreamDecoder::new(false);
        let crab = "🦀".as_bytes();
        assert_eq!(d.push_bytes(b"a"), "a");
        assert_eq!(d.push_bytes(&crab[..1]), "");
        assert_eq!(d.push_bytes(&crab[1..3]), "");
        assert_eq!(d.pending(), &crab[..3]);
        assert_eq!(d.push_bytes(&crab[3..]), "🦀");
        assert!(d.pending().is_empty());
    }

    #[test]
    fn invalid_bytes_become_one_replacement_each_once_certain() {
        let mut d = StreamDecoder::new(false);
        // 0xFF can never start a character: replaced at once.
        assert_eq!(d.push_bytes(&[0xFF, b'x']), "\u{FFFD}x");
        // 0xE2 0x82 could still become '€' ...
        assert_eq!(d.push_bytes(&[0xE2, 0x82]), "");
        // ... until an ASCII byte proves it cannot: one U+FFFD for the truncated sequence, as from_utf8_lossy.
        assert_eq!(d.push_bytes(b"y"), "\u{FFFD}y");
        assert_eq!(d.push_bytes(&[0xF0, 0x9F]), "");
        assert_eq!(d.finish(), "\u{FFFD}");
        assert_eq!(d.finish(), "");
    }
}
