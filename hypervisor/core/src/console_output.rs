//! What of a partition's console output reaches the physical console.
//!
//! Terminal control sequences are dropped, so a guest cannot move the cursor, clear the
//! screen or query the terminal of the user's console (busybox's shell sends the
//! cursor-position query `ESC [ 6 n` before each prompt): an ESC starts a sequence; `ESC
//! [` is a CSI sequence that ends at its final byte (0x40..=0x7E, ECMA-48 5.4), any
//! other `ESC x` is two bytes long. The caller shows the kept bytes that are not
//! printable as `.`.

/// The filter's state between bytes (a sequence may span calls).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ControlFilter {
    /// Plain text.
    #[default]
    Text,
    /// After ESC.
    Escape,
    /// Inside `ESC [ ...`, before the final byte.
    Csi,
}

/// ESC.
const ESC: u8 = 0x1b;

impl ControlFilter {
    /// Whether `byte` is shown, advancing the state.
    pub fn keep(&mut self, byte: u8) -> bool {
        match (*self, byte) {
            (Self::Text, ESC) => {
                *self = Self::Escape;
                false
            }
            (Self::Text, _) => true,
            (Self::Escape, b'[') => {
                *self = Self::Csi;
                false
            }
            (Self::Escape, _) => {
                *self = Self::Text;
                false
            }
            (Self::Csi, 0x40..=0x7e) => {
                *self = Self::Text;
                false
            }
            // A new line ends a broken sequence rather than swallowing text.
            (Self::Csi, b'\n') => {
                *self = Self::Text;
                true
            }
            (Self::Csi, _) => false,
        }
    }

    /// The state as a byte (for keeping it in an atomic).
    #[must_use]
    pub const fn to_u8(self) -> u8 {
        match self {
            Self::Text => 0,
            Self::Escape => 1,
            Self::Csi => 2,
        }
    }

    /// The state from [`ControlFilter::to_u8`] (anything else: text).
    #[must_use]
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Escape,
            2 => Self::Csi,
            _ => Self::Text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn shown(input: &[u8], filter: &mut ControlFilter) -> Vec<u8> {
        input.iter().copied().filter(|&b| filter.keep(b)).collect()
    }

    #[test]
    fn control_sequences_are_dropped() {
        let mut f = ControlFilter::default();
        assert_eq!(shown(b"linux# \x1b[6necho hi", &mut f), b"linux# echo hi");
        assert_eq!(shown(b"\x1b[1;32mgreen\x1b[0m \x1bcreset", &mut f), b"green reset");
        assert_eq!(f, ControlFilter::Text);
    }

    #[test]
    fn a_sequence_may_span_calls_and_a_newline_ends_a_broken_one() {
        let mut f = ControlFilter::default();
        assert_eq!(shown(b"a\x1b[12", &mut f), b"a");
        assert_eq!(f, ControlFilter::Csi);
        assert_eq!(ControlFilter::from_u8(f.to_u8()), f);
        assert_eq!(shown(b";5Hb", &mut f), b"b");
        assert_eq!(shown(b"\x1b[12\nnext", &mut f), b"\nnext");
        assert_eq!(ControlFilter::from_u8(9), ControlFilter::Text);
    }
}
