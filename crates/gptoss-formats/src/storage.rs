//! Bytes of a tensor: a window of a memory-mapped file, an owned buffer, or a recipe that builds them
//! from other storages when asked (a dense transpose, a row interleave of two sources, an F8 widening).
//! Recipes let a reader describe a canonical tensor that the file does not hold as such without
//! copying it at load; a consumer then builds one tensor at a time ([`Storage::materialized`]) and
//! drops it, so converting a checkpoint needs memory for one tensor, not for the model.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use half::{bf16, f16};
use memmap2::Mmap;

use crate::tensor::{DType, Q8_0_BLOCK, Q8_0_BLOCK_BYTES};

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
    /// Dense elements of `dtype` quantized to ggml Q8_0 blocks (32 elements → 34 bytes).
    QuantizeQ8_0 { src: Storage, dtype: DType },
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
            Recipe::QuantizeQ8_0 { dtype, .. } => format!("{} → q8_0", dtype.name()),
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

    /// Dense `dtype` elements (a whole number of 32-element blocks) quantized to ggml Q8_0 as
    /// llama.cpp's reference quantizer does, built on demand. Fails when the elements do not fill
    /// whole blocks.
    pub fn quantized_q8_0(src: Storage, dtype: DType) -> Result<Self, String> {
        let block_src = Q8_0_BLOCK * dtype.size_bytes();
        if !src.len().is_multiple_of(block_src) {
            return Err(format!(
                "{} bytes of {} are not whole blocks of {Q8_0_BLOCK} elements",
                src.len(),
                dtype.name()
            ));
        }
        let len = src.len() / block_src * Q8_0_BLOCK_BYTES;
        Ok(Storage::lazy(Recipe::QuantizeQ8_0 { src, dtype }, len))
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

    /// Bytes `[offset, offset + len)`, borrowed where they exist as such, else built (not kept);
    /// `None` when the range is not within the storage. Building a window of an interleave or a
    /// widening reads only the source bytes it needs; see [`Storage::reads_windows_cheaply`].
    pub fn read_range(&self, offset: usize, len: usize) -> Option<Cow<'_, [u8]>> {
        let end = offset.checked_add(len)?;
        (end <= self.len()).then(|| self.read(offset, len))
    }

    /// Whether [`Storage::read_range`] of a window costs only that window: false when a lazy
    /// transpose is involved (every window of it builds the whole matrix), so a consumer reading
    /// piecewise builds it once first.
    pub fn reads_windows_cheaply(&self) -> bool {
        match self {
            Storage::Mapped { .. } | Storage::Owned(_) => true,
            Storage::Lazy(l) => {
                l.cache.get().is_some()
                    || match &l.recipe {
                        Recipe::Transpose { .. } => false,
                        Recipe::Interleave { a, b, .. } => {
                            a.reads_windows_cheaply() && b.reads_windows_cheaply()
                        }
                        Recipe::Window { src, .. }
                        | Recipe::WidenF8E5M2 { src }
                        | Recipe::QuantizeQ8_0 { src, .. } => src.reads_windows_cheaply(),
                    }
            }
        }
    }

    /// Tells the kernel the mapped file pages behind these bytes will be read soon (asynchronous
    /// read-ahead of a cold file). Best effort: a refusal is logged and otherwise ignored.
    pub fn prefetch(&self) {
        self.for_each_window(&mut |map, start, len| {
            if let Err(e) = map.advise_range(memmap2::Advice::WillNeed, start, len) {
                tracing::debug!("madvise(WILLNEED) of {len} mapped bytes failed: {e}");
            }
        });
    }

    /// Maps every file page behind these bytes into this process now (`MADV_POPULATE_READ`, reading
    /// from the file what the page cache lacks), so the first reads of a CPU matmul take no page
    /// faults (llama.cpp maps its GGUF with `MAP_POPULATE` for the same reason). Best effort: a
    /// kernel without it (before Linux 5.14) or another OS logs it and the pages fault in on first
    /// use as before.
    pub fn populate(&self) {
        self.for_each_window(&mut |map, start, len| {
            #[cfg(target_os = "linux")]
            let r = map.advise_range(memmap2::Advice::PopulateRead, start, len);
            #[cfg(not(target_os = "linux"))]
            let r = map.advise_range(memmap2::Advice::WillNeed, start, len);
            if let Err(e) = r {
                tracing::debug!("madvise(POPULATE_READ) of {len} mapped bytes failed: {e}");
            }
        });
    }

    /// Drops the mapped file pages behind these bytes from this process (`MADV_DONTNEED`), so a
    /// consumer that has copied them elsewhere (a GPU upload) no longer holds them in its resident
    /// set. The bytes stay readable: a later read maps them again from the page cache or the file.
    /// Pages shared with a neighbouring tensor are dropped too and come back the same way.
    pub fn release_pages(&self) {
        self.for_each_window(&mut |map, start, len| {
            // SAFETY: `Mmap` maps the file read-only and shared (memmap2 `Mmap::map`), so no page holds
            // private changes that MADV_DONTNEED could discard: a later access faults the same file
            // bytes back in. Borrows handed out by `bytes()` stay valid for the same reason.
            let r = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
            };
            if let Err(e) = r {
                tracing::debug!("madvise(DONTNEED) of {len} mapped bytes failed: {e}");
            }
        });
    }

    /// Calls `f(map, start, len)` for every mapped window these bytes are read from (none for owned
    /// bytes or a lazy storage already built).
    fn for_each_window(&self, f: &mut dyn FnMut(&Mmap, usize, usize)) {
        match self {
            Storage::Mapped { map, start, len } if *len > 0 => f(map, *start, *len),
            Storage::Mapped { .. } | Storage::Owned(_) => {}
            Storage::Lazy(l) if l.cache.get().is_some() => {}
            Storage::Lazy(l) => match &l.recipe {
                Recipe::Transpose { src, .. }
                | Recipe::WidenF8E5M2 { src }
                | Recipe::QuantizeQ8_0 { src, .. } => src.for_each_window(f),
                // A window of a lazy storage may touch only part of its source; the whole source
                // is an upper bound, and the only cost of advising more is a later page fault.
                Recipe::Window { src, .. } => src.for_each_window(f),
                Recipe::Interleave { a, b, .. } => {
                    a.for_each_window(f);
                    b.for_each_window(f);
                }
            },
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
            Recipe::QuantizeQ8_0 { src, dtype } => {
                let (first, last) = (
                    offset / Q8_0_BLOCK_BYTES,
                    (offset + len).div_ceil(Q8_0_BLOCK_BYTES),
                );
                let es = dtype.size_bytes();
                let raw = src.read(first * Q8_0_BLOCK * es, (last - first) * Q8_0_BLOCK * es);
                let values: Vec<f32> = (0..raw.len() / es).map(|i| dtype.read(&raw, i)).collect();
                let mut blocks = Vec::with_capacity((last - first) * Q8_0_BLOCK_BYTES);
                crate::gguf::encode::quantize_q8_0(&values, &mut blocks);
                let skip = offset - first * Q8_0_BLOCK_BYTES;
                blocks[skip..skip + len].to_vec()
            }
        }
    }
}

/// The bf16 value of one F8_E5M2 byte (E5M2 is the top byte of an IEEE half).
fn widen_f8e5m2(b: u8) -> bf16 {
    bf16::from_f32(f16::from_bits(u16::from(b) << 8).to_f32())
}

/// Bytes `[offset, offset + len)` of `a` and `b` interleaved in `unit`-byte rows, copied once.
fn interleave(a: &Storage, b: &Storage, unit: usize, offset: usize, len: usize) -> Vec<u8> {
    // Output row k is row k / 2 of `a` (k even) or `b` (k odd); read the source rows covering the range.
    let end = offset + len;
    let (first_row, end_row) = (offset / unit, end.div_ceil(unit));
    let (src_first, src_end) = (first_row / 2, end_row.div_ceil(2));
    let (from, count) = (src_first * unit, (src_end - src_first) * unit);
    let (ra, rb) = (a.read(from, count), b.read(from, count));
    let mut woven = Vec::with_capacity(len);
    for row in first_row..end_row {
        let src = if row.is_multiple_of(2) { &ra } else { &rb };
        let at = (row / 2 - src_first) * unit;
        let row_start = row * unit;
        let (lo, hi) = (
            offset.max(row_start) - row_start,
            end.min(row_start + unit) - row_start,
        );
        woven.extend_from_slice(&src[at + lo..at + hi]);
    }
    woven
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

    #[test]
    fn q8_0_quantization_matches_the_ggml_quantizer_in_every_window() {
        let values: Vec<f32> = (0..96)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut want = Vec::new();
        crate::gguf::encode::quantize_q8_0(&values, &mut want);
        for dtype in [DType::F32, DType::BF16] {
            // bf16 sources are quantized from their bf16 values.
            let vals: Vec<f32> = values.iter().map(|&v| dtype.round(v)).collect();
            let mut expect = Vec::new();
            crate::gguf::encode::quantize_q8_0(&vals, &mut expect);
            let bytes: Vec<u8> = match dtype {
                DType::F32 => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
                _ => vals
                    .iter()
                    .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                    .collect(),
            };
            let q = Storage::quantized_q8_0(Storage::owned(bytes), dtype).unwrap();
            assert_eq!(q.len(), 3 * Q8_0_BLOCK_BYTES);
            assert_eq!(q.bytes(), &expect[..]);
            check_ranges(&q, &expect);
        }
        assert_eq!(want.len(), 102);
        let short = Storage::quantized_q8_0(Storage::owned(vec![0; 4 * 33]), DType::F32);
        assert!(short.unwrap_err().contains("not whole blocks of 32"));
    }

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

    /// The `Rss` in KiB of the mapping that starts at `addr`, from /proc/self/smaps.
    fn mapped_rss_kib(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut lines = smaps.lines();
        while let Some(line) = lines.next() {
            let start = line.split(['-', ' ']).next().unwrap_or("");
            if usize::from_str_radix(start, 16).ok() != Some(addr) {
                continue;
            }
            let rss = lines.find_map(|l| l.strip_prefix("Rss:")).unwrap();
            return rss.trim().trim_end_matches("kB").trim().parse().unwrap();
        }
        panic!("no mapping at {addr:#x}");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn released_pages_leave_the_resident_set_and_stay_readable() {
        let bytes: Vec<u8> = (0..8usize << 20).map(|i| (i * 31 % 251) as u8).collect();
        let path = std::env::temp_dir().join(format!("gptoss-release-{}.bin", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let map = Arc::new(unsafe { Mmap::map(&file) }.unwrap());
        let addr = map.as_ptr() as usize;
        let whole = Storage::Mapped {
            map: map.clone(),
            start: 0,
            len: bytes.len(),
        };
        // Through a lazy interleave of two windows, as the GGUF reader builds gate_up.
        let half = bytes.len() / 2;
        let woven =
            Storage::interleaved(whole.slice(0, half), whole.slice(half, half), 4096).unwrap();
        assert_eq!(woven.materialized().len(), bytes.len());
        woven.prefetch();
        let before = mapped_rss_kib(addr);
        woven.release_pages();
        let after = mapped_rss_kib(addr);
        assert!(
            before >= 8 << 10,
            "{before} KiB resident after reading 8 MiB"
        );
        assert!(after < 64, "{after} KiB still resident after the release");
        assert!(whole.bytes() == &bytes[..], "the bytes read back unchanged");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn read_range_checks_bounds_and_transposes_are_not_windowed() {
        let s = Storage::interleaved(seq(8), seq(8), 2).unwrap();
        assert_eq!(
            s.read_range(14, 2).unwrap().as_ref(),
            s.bytes()[14..16].to_vec()
        );
        assert!(s.read_range(15, 2).is_none());
        assert!(s.read_range(usize::MAX, 2).is_none());
        assert!(s.reads_windows_cheaply() && s.slice(2, 4).reads_windows_cheaply());
        let t = Storage::transposed(seq(6), 2, 3, 1).unwrap();
        assert!(!t.reads_windows_cheaply() && !t.slice(1, 2).reads_windows_cheaply());
        t.bytes();
        assert!(t.reads_windows_cheaply(), "built once, windows are cheap");
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
