//! Bytes of a tensor: a window of a memory-mapped file, an owned buffer, or a recipe that builds them
//! from other storages when asked (a dense transpose, a row interleave of two sources, an F8 widening).
//! Recipes let a reader describe a canonical tensor that the file does not hold as such without
//! copying it at load; a consumer then builds one tensor at a time ([`Storage::materialized`]) and
//! drops it, so converting a checkpoint needs memory for one tensor, not for the model.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use half::{bf16, f16};
use memmap2::Mmap;

/// Bytes of a tensor.
#[derive(Clone)]
pub enum Storage {
    /// `len` bytes at `start` of a mapped file.
    Mapped {
        /// The whole mapped file.
        map: Arc<Mmap>,
        /// Byte offset of the tensor in the map.
        start: usize,
        /// Byte length of the tensor.
        len: usize,
    },
    /// Bytes produced at load (a conversion such as Q4_K → f16, a test tensor).
    Owned(Arc<Vec<u8>>),
    /// Bytes built from other storages on demand (see [`Lazy`]).
    Lazy(Arc<Lazy>),
}

/// How a [`Storage::Lazy`] builds its bytes.
#[derive(Clone, Debug)]
enum Recipe {
    /// A row-major `[rows, cols]` matrix of `elem_bytes` elements, read as `[cols, rows]`.
    Transpose {
        src: Storage,
        rows: usize,
        cols: usize,
        elem_bytes: usize,
    },
    /// Units of `unit` bytes alternating from `a` and `b`: a0, b0, a1, b1, ...
    Interleave { a: Storage, b: Storage, unit: usize },
    /// Bytes `[start, start + len)` of another storage.
    Window { src: Storage, start: usize },
    /// F8_E5M2 bytes widened to little-endian bf16 (exact: every E5M2 value is a bf16 value).
    WidenF8E5M2 { src: Storage },
}

/// Bytes described by a recipe over other storages, built when first needed.
pub struct Lazy {
    recipe: Recipe,
    len: usize,
    /// Filled by [`Storage::bytes`] (which must return a borrow); never by the streaming reads.
    cache: OnceLock<Arc<Vec<u8>>>,
}

impl std::fmt::Debug for Lazy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match &self.recipe {
            Recipe::Transpose { rows, cols, .. } => format!("transpose [{rows}, {cols}]"),
            Recipe::Interleave { unit, .. } => format!("interleave of {unit}-byte rows"),
            Recipe::Window { start, .. } => format!("window at {start}"),
            Recipe::WidenF8E5M2 { .. } => "f8_e5m2 → bf16".to_string(),
        };
        let cached = if self.cache.get().is_some() {
            ", built"
        } else {
            ""
        };
        write!(f, "{what}, {} bytes{cached}", self.len)
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Storage::Mapped { start, len, .. } => write!(f, "Mapped({start}..+{len})"),
            Storage::Owned(v) => write!(f, "Owned({} bytes)", v.len()),
            Storage::Lazy(l) => write!(f, "Lazy({l:?})"),
        }
    }
}

impl Storage {
    /// Wraps an owned buffer.
    pub fn owned(bytes: Vec<u8>) -> Self {
        Storage::Owned(Arc::new(bytes))
    }

    fn lazy(recipe: Recipe, len: usize) -> Self {
        Storage::Lazy(Arc::new(Lazy {
            recipe,
            len,
            cache: OnceLock::new(),
        }))
    }

    /// `src`, a row-major `[rows, cols]` matrix of `elem_bytes`-byte elements, as `[cols, rows]`
    /// (built on demand). Fails when `src` does not hold exactly that many bytes.
    pub fn transposed(
        src: Storage,
        rows: usize,
        cols: usize,
        elem_bytes: usize,
    ) -> Result<Self, String> {
        let len = rows * cols * elem_bytes;
        if src.len() != len {
            return Err(format!(
                "{} bytes do not hold a [{rows}, {cols}] matrix of {elem_bytes}-byte elements",
                src.len()
            ));
        }
        Ok(Storage::lazy(
            Recipe::Transpose {
                src,
                rows,
                cols,
                elem_bytes,
            },
            len,
        ))
    }

    /// Rows of `unit` bytes taken alternately from `a` and `b` (a0, b0, a1, b1, ...), built on demand.
    /// Fails unless both hold the same whole number of rows.
    pub fn interleaved(a: Storage, b: Storage, unit: usize) -> Result<Self, String> {
        if a.len() != b.len() || unit == 0 || !a.len().is_multiple_of(unit) {
            return Err(format!(
                "stored sizes {} and {} do not hold the same number of {unit}-byte rows",
                a.len(),
                b.len()
            ));
        }
        let len = 2 * a.len();
        Ok(Storage::lazy(Recipe::Interleave { a, b, unit }, len))
    }

    /// F8_E5M2 bytes as bf16 (two bytes per element), built on demand.
    pub fn widened_f8e5m2(src: Storage) -> Self {
        let len = 2 * src.len();
        Storage::lazy(Recipe::WidenF8E5M2 { src }, len)
    }

    /// The two sources and the row size of a [`Storage::interleaved`] recipe, so a consumer that reads
    /// whole rows (the CPU kernels) can read them in place instead of building the woven copy.
    pub fn interleaved_parts(&self) -> Option<(&Storage, &Storage, usize)> {
        match self {
            Storage::Lazy(l) => match &l.recipe {
                Recipe::Interleave { a, b, unit } => Some((a, b, *unit)),
                _ => None,
            },
            _ => None,
        }
    }

    /// True when the bytes are built on demand (not a window of a file or an owned buffer).
    pub fn is_lazy(&self) -> bool {
        matches!(self, Storage::Lazy(_))
    }

    /// The bytes. Lazy storage is built on the first call and kept as long as this storage (or a
    /// clone) lives; a consumer that goes through many tensors once uses [`Storage::materialized`].
    pub fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped { map, start, len } => &map[*start..*start + *len],
            Storage::Owned(v) => v,
            Storage::Lazy(l) => l.cache.get_or_init(|| Arc::new(l.build(0, l.len))),
        }
    }

    /// The same bytes as a mapped window or an owned buffer: lazy storage is built now (and not kept
    /// by this storage), everything else is returned as is without copying.
    pub fn materialized(&self) -> Cow<'_, Storage> {
        match self {
            Storage::Lazy(l) => Cow::Owned(Storage::Owned(match l.cache.get() {
                Some(built) => built.clone(),
                None => Arc::new(l.build(0, l.len)),
            })),
            other => Cow::Borrowed(other),
        }
    }

    /// Bytes `[offset, offset + len)`, borrowed where they exist as such, else built (not kept).
    /// The caller guarantees the range.
    fn read(&self, offset: usize, len: usize) -> Cow<'_, [u8]> {
        debug_assert!(offset + len <= self.len(), "storage read out of range");
        match self {
            Storage::Lazy(l) => match l.cache.get() {
                Some(built) => Cow::Borrowed(&built[offset..offset + len]),
                None => Cow::Owned(l.build(offset, len)),
            },
            other => Cow::Borrowed(&other.bytes()[offset..offset + len]),
        }
    }

    /// Byte length.
    pub fn len(&self) -> usize {
        match self {
            Storage::Mapped { len, .. } => *len,
            Storage::Owned(v) => v.len(),
            Storage::Lazy(l) => l.len,
        }
    }

    /// True when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A window `[offset, offset + len)` of these bytes: zero-copy for mapped storage, still lazy for
    /// lazy storage, a copy for owned buffers. The caller guarantees the range.
    pub fn slice(&self, offset: usize, len: usize) -> Storage {
        debug_assert!(offset + len <= self.len(), "storage slice out of range");
        match self {
            Storage::Mapped { map, start, .. } => Storage::Mapped {
                map: map.clone(),
                start: start + offset,
                len,
            },
            Storage::Owned(v) => Storage::owned(v[offset..offset + len].to_vec()),
            Storage::Lazy(_) => Storage::lazy(
                Recipe::Window {
                    src: self.clone(),
                    start: offset,
                },
                len,
            ),
        }
    }
}

impl Lazy {
    /// Builds bytes `[offset, offset + len)` of the recipe's result.
    fn build(&self, offset: usize, len: usize) -> Vec<u8> {
        match &self.recipe {
            Recipe::Window { src, start } => src.read(start + offset, len).into_owned(),
            Recipe::Interleave { a, b, unit } => interleave(a, b, *unit, offset, len),
            Recipe::Transpose {
                src,
                rows,
                cols,
                elem_bytes,
            } => {
                let all = transpose(&src.read(0, src.len()), *rows, *cols, *elem_bytes);
                if offset == 0 && len == all.len() {
                    all
                } else {
                    all[offset..offset + len].to_vec()
                }
            }
            Recipe::WidenF8E5M2 { src } => {
                let (first, last) = (offset / 2, (offset + len).div_ceil(2));
                let wide: Vec<u8> = src
                    .read(first, last - first)
                    .iter()
                    .flat_map(|&b| widen_f8e5m2(b).to_le_bytes())
                    .collect();
                let skip = offset - 2 * first;
                wide[skip..skip + len].to_vec()
            }
        }
    }
}

/// The bf16 value of one F8_E5M2 byte (E5M2 is the top byte of an IEEE half).
fn widen_f8e5m2(b: u8) -> bf16 {
    bf16::from_f32(f16::from_bits(u16::from(b) << 8).to_f32())
}

/// Bytes `[offset, offset + len)` of `a` and `b` interleaved in `unit`-byte rows.
fn interleave(a: &Storage, b: &Storage, unit: usize, offset: usize, len: usize) -> Vec<u8> {
    // Output row k is row k / 2 of `a` (k even) or `b` (k odd); read the source rows covering the range.
    let (first_row, end_row) = (offset / unit, (offset + len).div_ceil(unit));
    let (src_first, src_end) = (first_row / 2, end_row.div_ceil(2));
    let (from, count) = (src_first * unit, (src_end - src_first) * unit);
    let (ra, rb) = (a.read(from, count), b.read(from, count));
    let mut woven = Vec::with_capacity(2 * count);
    for (x, y) in ra.chunks(unit).zip(rb.chunks(unit)) {
        woven.extend_from_slice(x);
        woven.extend_from_slice(y);
    }
    let skip = offset - 2 * from;
    if skip == 0 && woven.len() == len {
        return woven;
    }
    woven[skip..skip + len].to_vec()
}

/// Transposes a row-major `[rows, cols]` matrix of `es`-byte elements into `[cols, rows]`, in
/// tiles so that both sides are read and written a cache line at a time.
fn transpose(bytes: &[u8], rows: usize, cols: usize, es: usize) -> Vec<u8> {
    const TILE: usize = 32;
    let mut out = vec![0u8; rows * cols * es];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    let (src, dst) = ((r * cols + c) * es, (c * rows + r) * es);
                    out[dst..dst + es].copy_from_slice(&bytes[src..src + es]);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(n: usize) -> Storage {
        Storage::owned((0..n).map(|i| i as u8).collect())
    }

    /// Every sub-range of a lazy storage read on its own equals the same range of the whole.
    fn check_ranges(s: &Storage, whole: &[u8]) {
        assert_eq!(s.len(), whole.len());
        for off in 0..whole.len() {
            for len in 0..=whole.len() - off {
                let Storage::Lazy(l) = s else { panic!() };
                assert_eq!(l.build(off, len), &whole[off..off + len], "{off}+{len}");
            }
        }
    }

    #[test]
    fn transpose_reads_columns_as_rows() {
        // [2, 3] of 2-byte elements: element (r, c) = bytes [2(3r + c), 2(3r + c) + 1].
        let s = Storage::transposed(seq(12), 2, 3, 2).unwrap();
        let want = [0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11];
        assert_eq!(s.materialized().bytes(), &want);
        check_ranges(&s, &want);
        assert!(Storage::transposed(seq(11), 2, 3, 2).is_err());
    }

    #[test]
    fn transpose_of_a_large_matrix_matches_the_naive_one() {
        let (rows, cols) = (70, 45); // not multiples of the tile
        let src: Vec<u8> = (0..rows * cols * 4).map(|i| (i * 7 % 251) as u8).collect();
        let t = Storage::transposed(Storage::owned(src.clone()), rows, cols, 4).unwrap();
        let got = t.materialized().bytes().to_vec();
        for r in 0..rows {
            for c in 0..cols {
                let (s, d) = ((r * cols + c) * 4, (c * rows + r) * 4);
                assert_eq!(got[d..d + 4], src[s..s + 4]);
            }
        }
    }

    #[test]
    fn interleave_alternates_rows_and_reads_any_range() {
        let a = Storage::owned(vec![1, 2, 3, 4, 5, 6]);
        let b = Storage::owned(vec![11, 12, 13, 14, 15, 16]);
        let s = Storage::interleaved(a, b, 2).unwrap();
        let want = [1, 2, 11, 12, 3, 4, 13, 14, 5, 6, 15, 16];
        check_ranges(&s, &want);
        assert_eq!(s.bytes(), &want);
        let (pa, pb, unit) = s.interleaved_parts().unwrap();
        assert_eq!(
            (pa.bytes(), pb.bytes(), unit),
            (&[1, 2, 3, 4, 5, 6][..], &[11, 12, 13, 14, 15, 16][..], 2)
        );
        assert!(seq(4).interleaved_parts().is_none());
        let e = Storage::interleaved(seq(6), seq(4), 2).unwrap_err();
        assert!(e.contains("6 and 4"), "{e}");
        assert!(Storage::interleaved(seq(6), seq(6), 4).is_err());
    }

    #[test]
    fn windows_of_lazy_storage_stay_lazy_and_exact() {
        let s = Storage::interleaved(seq(8), Storage::owned(vec![9; 8]), 4).unwrap();
        let w = s.slice(3, 7);
        assert!(w.is_lazy());
        assert_eq!(w.materialized().bytes(), &s.bytes()[3..10]);
        assert_eq!(w.slice(2, 3).bytes(), &s.bytes()[5..8]);
    }

    #[test]
    fn widen_f8e5m2_is_exact() {
        // 0x3C = 1.0, 0xC0 = -2.0, 0x01 = smallest subnormal 2^-16, 0x7B = 57344 (max normal).
        let s = Storage::widened_f8e5m2(Storage::owned(vec![0x3C, 0xC0, 0x01, 0x7B]));
        let vals: Vec<f32> = s
            .bytes()
            .chunks(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        assert_eq!(vals, vec![1.0, -2.0, 2f32.powi(-16), 57344.0]);
        check_ranges(&s, s.bytes());
    }

    #[test]
    fn materialized_does_not_keep_the_bytes() {
        let s = Storage::transposed(seq(6), 2, 3, 1).unwrap();
        let Storage::Lazy(l) = &s else { panic!() };
        assert!(s.materialized().bytes() == [0, 3, 1, 4, 2, 5]);
        assert!(
            l.cache.get().is_none(),
            "a streaming read must not fill the cache"
        );
        s.bytes();
        assert!(l.cache.get().is_some());
        let m = s.materialized();
        assert!(matches!(&*m, Storage::Owned(v) if Arc::ptr_eq(v, l.cache.get().unwrap())));
    }
}
