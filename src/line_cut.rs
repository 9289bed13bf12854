//! Making one printable line of bounded size out of text someone else wrote.
//!
//! Forwarded log lines and a launched child's output end up on the
//! controller's terminal behind a `[worker N ...]` prefix. A line break inside
//! the text would start a line without that prefix, a control character could
//! rewrite the terminal, and a line without end would be buffered without
//! bound. So every such text goes through [`cut_line`]: control characters
//! become spaces, and the text is cut at a fixed size with [`CUT_MARKER`].

/// Most bytes of one forwarded or passed-through line, marker excluded.
pub(crate) const MAX_LINE: usize = 4096;

/// What ends a line that was cut.
pub(crate) const CUT_MARKER: &str = " [line cut]";

/// `text` as one line: control characters (tab aside) replaced by spaces,
/// trailing line ends removed, and cut to `max` bytes (on a character
/// boundary) followed by [`CUT_MARKER`] if it was longer.
pub(crate) fn cut_line(text: &str, max: usize) -> String {
    let text = text.trim_end_matches(['\n', '\r']);
    let (kept, cut) = if text.len() <= max {
        (text, false)
    } else {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        (&text[..end], true)
    };
    let mut out = String::with_capacity(kept.len() + if cut { CUT_MARKER.len() } else { 0 });
    out.extend(
        kept.chars()
            .map(|c| if c.is_control() && c != '\t' { ' ' } else { c }),
    );
    if cut {
        out.push_str(CUT_MARKER);
    }
    out
}

/// [`cut_line`] for bytes read from a pipe: invalid UTF-8 is replaced.
pub(crate) fn cut_bytes(bytes: &[u8], max: usize) -> String {
    let bytes = &bytes[..bytes.len().min(max.saturating_add(4))];
    cut_line(&String::from_utf8_lossy(bytes), max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_lines_keep_their_text_without_line_end() {
        assert_eq!(cut_line("hello world\r\n", 100), "hello world");
        assert_eq!(cut_line("tab\tkept", 100), "tab\tkept");
    }

    #[test]
    fn control_characters_cannot_start_a_new_line() {
        let out = cut_line("one\ntwo\r\x1b[2Jthree", 100);
        assert!(!out.contains(['\n', '\r', '\x1b']), "{out:?}");
        assert_eq!(out, "one two  [2Jthree");
    }

    #[test]
    fn long_lines_are_cut_on_a_character_boundary_with_the_marker() {
        let long = "é".repeat(100); // 200 bytes
        let out = cut_line(&long, 51);
        assert!(out.ends_with(CUT_MARKER));
        let kept = out.strip_suffix(CUT_MARKER).unwrap();
        assert_eq!(kept.len(), 50);
        assert!(kept.chars().all(|c| c == 'é'));
        assert_eq!(cut_line(&"a".repeat(MAX_LINE), MAX_LINE).len(), MAX_LINE);
    }

    #[test]
    fn bytes_are_bounded_before_decoding() {
        let mut bytes = vec![b'x'; 10_000];
        bytes.push(0xff);
        let out = cut_bytes(&bytes, 100);
        assert_eq!(out.len(), 100 + CUT_MARKER.len());
        assert_eq!(cut_bytes(b"ab\xffc\n", 100), "ab\u{fffd}c");
    }
}
