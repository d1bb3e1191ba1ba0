//! When to stop generating: end-of-generation tokens, user stop strings (which may span token boundaries) and a
//! token budget; and the text to show until then.

use crate::tokenizer::{StreamDecoder, Tokenizer, TokenizerError};

/// Finds user stop strings in streamed text. Text that might be the start of a stop string is held back until
/// the following text settles it, so a stop string is never partly shown.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What [`StopMatcher::push`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopStatus {
    /// Text that can be shown now (possibly empty: it may all be held back).
    Continue(String),
    /// A stop string was found: the text before it, and which stop string it was.
    Stopped { text: String, stop: String },
}

impl StopMatcher {
    /// Empty stop strings are ignored.
    pub fn new<S: Into<String>>(stops: impl IntoIterator<Item = S>) -> Self {
        StopMatcher {
            stops: stops.into_iter().map(Into::into).filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopStatus {
        self.held.push_str(text);
        // The earliest occurrence wins; among stop strings starting there, the first listed.
        let found = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|pos| (pos, s)))
            .min_by_key(|&(pos, _)| pos);
        if let Some((pos, stop)) = found {
            let stop = stop.clone();
            let mut text = std::mem::take(&mut self.held);
            text.truncate(pos);
            return StopStatus::Stopped { text, stop };
        }
        // Hold the longest tail that is a proper prefix of a stop string. A tail starting inside a UTF-8
        // character can never equal a prefix of a valid string, so the cut is always on a character boundary.
        let hold = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - hold;
        let tail = self.held.split_off(cut);
        StopStatus::Continue(std::mem::replace(&mut self.held, tail))
    }

    /// Text held back so far.
    pub fn held(&self) -> &str {
        &self.held
    }

    /// The stream ended without a stop string: release what was held back.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let (t, s) = (text.as_bytes(), stop.as_bytes());
    let max = t.len().min(s.len() - 1);
    (1..=max).rev().find(|&n| t[t.len() - n..] == s[..n]).unwrap_or(0)
}

/// Why generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-generation token (EOS, EOT, `<|im_end|>`, ...); it is not part of the output.
    Eog(u32),
    /// A user stop string; neither it nor anything after it is part of the output.
    StopString(String),
    /// `max_tokens` tokens were generated.
    MaxTokens,
}

/// When to stop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopCriteria {
    /// Stop after this many generated tokens; `None` for no limit.
    pub max_tokens: Option<usize>,
    pub stop_strings: Vec<String>,
    /// Keep going through end-of-generation tokens (llama.cpp `--ignore-eos`).
    pub ignore_eog: bool,
    /// Show CONTROL tokens' text (`<|im_end|>`) instead of nothing.
    pub render_special: bool,
}

/// The text produced by one generated token, and whether generation is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub text: String,
    pub stop: Option<StopReason>,
}

/// Turns generated token ids into displayable text and decides when to stop.
#[derive(Debug, Clone)]
pub struct Generation {
    criteria: StopCriteria,
    decoder: StreamDecoder,
    matcher: StopMatcher,
    n_tokens: usize,
    stopped: Option<StopReason>,
}

impl Generation {
    pub fn new(criteria: StopCriteria) -> Self {
        Generation {
            decoder: StreamDecoder::new(criteria.render_special),
            matcher: StopMatcher::new(criteria.stop_strings.clone()),
            criteria,
            n_tokens: 0,
            stopped: None,
        }
    }

    /// Feeds one generated token. Once a step reports a stop, later calls return no text and the same reason.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Step, TokenizerError> {
        if let Some(reason) = &self.stopped {
            return Ok(Step {
                text: String::new(),
                stop: Some(reason.clone()),
            });
        }
        self.n_tokens += 1;
        let mut text = String::new();
        let mut stop = None;
        if tokenizer.is_eog(id) && !self.criteria.ignore_eog {
            stop = Some(StopReason::Eog(id));
        } else {
            let piece = self.decoder.push(tokenizer, id)?;
            match self.matcher.push(&piece) {
                StopStatus::Continue(t) => text = t,
                StopStatus::Stopped { text: t, stop: s } => return Ok(self.stop_with(t, StopReason::StopString(s))),
            }
            if self.criteria.max_tokens.is_some_and(|max| self.n_tokens >= max) {
                stop = Some(StopReason::MaxTokens);
            }
        }
        let Some(reason) = stop else {
            return Ok(Step { text, stop: None });
        };
        // Release what was held back: an unfinished character (as U+FFFD) and a partial stop-string match —
        // unless that completes a stop string.
        let tail = self.decoder.finish();
        match self.matcher.push(&tail) {
            StopStatus::Continue(t) => {
                text.push_str(&t);
                text.push_str(&self.matcher.finish());
                Ok(self.stop_with(text, reason))
            }
            StopStatus::Stopped { text: t, stop: s } => {
                text.push_str(&t);
                Ok(self.stop_with(text, StopReason::StopString(s)))
            }
        }
    }

    fn stop_with(&mut self, text: String, reason: StopReason) -> Step {
        self.stopped = Some(reason.clone());
        Step {
            text,
            stop: Some(reason),
        }
    }

    /// The caller ends generation for a reason of its own (a full context, an interrupt): releases the text held
    /// back (an unfinished character as U+FFFD, a partial stop-string match) unless it completes a stop string.
    pub fn finish(&mut self) -> String {
        if self.stopped.is_some() {
            return String::new();
        }
        let tail = self.decoder.finish();
        match self.matcher.push(&tail) {
            StopStatus::Continue(mut t) => {
                t.push_str(&self.matcher.finish());
                t
            }
            StopStatus::Stopped { text, stop } => self.stop_with(text, StopReason::StopString(stop)).text,
        }
    }

    /// Tokens fed so far (including a final EOG token).
    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    pub fn stop_reason(&self) -> Option<&StopReason> {
        self.stopped.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_prefix() {
        assert_eq!(longest_suffix_prefix("abc</", "</s>"), 2);
        assert_eq!(longest_suffix_prefix("abc", "</s>"), 0);
        assert_eq!(longest_suffix_prefix("</s", "</s>"), 3);
        assert_eq!(longest_suffix_prefix("x", "x"), 0);
    }
}
