//! The wire protocol: messages, how they are encoded, and close codes.

pub mod close;
pub mod codec;
pub mod messages;

pub use codec::{CodecError, FrameDecoder};
pub use messages::*;

/// `text` cut to at most `max` bytes (on a character boundary, marked with
/// `...`): how reasons a peer chose are kept, so they cost a fixed amount.
pub(crate) fn bounded_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}
