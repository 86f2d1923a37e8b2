//! A byte string stored inline when short, on the heap otherwise: keys and small string values
//! cost no separate allocation up to [`INLINE_CAPACITY_BYTES`] bytes.

/// The longest byte string kept inline; makes [`SmallBytes`] 24 bytes in all.
pub const INLINE_CAPACITY_BYTES: usize = 22;

#[derive(Clone, PartialEq, Eq)]
pub enum SmallBytes {
    Inline {
        len: u8,
        data: [u8; INLINE_CAPACITY_BYTES],
    },
    Heap(Box<[u8]>),
}

impl SmallBytes {
    pub fn new(bytes: &[u8]) -> Self {
        if bytes.len() <= INLINE_CAPACITY_BYTES {
            let mut data = [0u8; INLINE_CAPACITY_BYTES];
            data[..bytes.len()].copy_from_slice(bytes);
            SmallBytes::Inline {
                // Fits: bounded by INLINE_CAPACITY_BYTES above.
                len: bytes.len() as u8,
                data,
            }
        } else {
            SmallBytes::Heap(bytes.into())
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            SmallBytes::Inline { len, data } => &data[..usize::from(*len)],
            SmallBytes::Heap(b) => b,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            SmallBytes::Inline { len, .. } => usize::from(*len),
            SmallBytes::Heap(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes owned beyond the value itself.
    pub fn heap_bytes(&self) -> usize {
        match self {
            SmallBytes::Inline { .. } => 0,
            SmallBytes::Heap(b) => b.len(),
        }
    }
}

impl std::ops::Deref for SmallBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::borrow::Borrow<[u8]> for SmallBytes {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::fmt::Debug for SmallBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_slice()))
    }
}

impl std::hash::Hash for SmallBytes {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_and_heap() {
        assert_eq!(std::mem::size_of::<SmallBytes>(), 24);
        let short = SmallBytes::new(b"key:000000012345");
        assert!(matches!(short, SmallBytes::Inline { .. }));
        assert_eq!(short.as_slice(), b"key:000000012345");
        let long = SmallBytes::new(&[7u8; 23]);
        assert!(matches!(long, SmallBytes::Heap(_)));
        assert_eq!(long.len(), 23);
        assert!(SmallBytes::new(b"").is_empty());
    }
}
