//! How the x86 int8 kernels read each weight format: a block (or two, for 512-bit registers) as int8
//! values in the order the activations are quantized in, and its scale (E8M0 or f16 times the table's
//! unit). Every method is `#[inline(always)]` so it compiles into the target-feature kernels of
//! `int8_x86.rs`; the scalar definition they must equal is `IntWeight::block`.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use gptoss_formats::tensor::Q8_0_BLOCK_BYTES;

use super::quad_x86::{Quads, QUAD_TABLE_MAX};
use super::weights::{scale_bytes, BlockScale, IntWeight, RowBytes};

/// One weight row's bytes: inline blocks, or codes plus separate scales.
#[derive(Clone, Copy)]
pub(super) struct RowPtr {
    pub(super) data: *const u8,
    pub(super) scales: *const u8,
}

/// A weight format as the SIMD kernels decode it. Methods are inlined into the target-feature kernels.
pub(super) trait Decode: Copy {
    /// The 16-entry int8 table (zeros for Q8_0).
    fn table(&self) -> [i8; 16];
    /// Row `j`'s pointers.
    fn row(&self, j: usize) -> RowPtr;
    /// The weight's row count.
    fn rows(&self) -> usize;
    /// Block `b` of a row as 32 int8 (layout order) and its scale. Needs AVX2 + F16C.
    unsafe fn ymm(&self, r: RowPtr, b: usize, tbl: __m256i) -> (__m256i, f32);
    /// Blocks `b` and `b + 1` (128-bit lanes 0–1 and 2–3) and their scales in 8-lane halves. Needs
    /// AVX-512 F/BW.
    unsafe fn zmm(&self, r: RowPtr, b: usize, tbl: __m512i) -> (__m512i, __m512);
    /// [`Decode::zmm`] with every value offset by +128 (unsigned), given the table offset likewise.
    #[inline(always)]
    unsafe fn zmm_u(&self, r: RowPtr, b: usize, tbl_u: __m512i) -> (__m512i, __m512) {
        self.zmm(r, b, tbl_u)
    }
    /// [`Decode::ymm`] with every value offset by +128 (unsigned), given the table offset likewise.
    #[inline(always)]
    unsafe fn ymm_u(&self, r: RowPtr, b: usize, tbl_u: __m256i) -> (__m256i, f32) {
        self.ymm(r, b, tbl_u)
    }
    /// Blocks `b` to `b + 3` as two [`Decode::zmm_u`] results (blocks `b`, `b + 1`, then `b + 2`,
    /// `b + 3`). Implementations that override it may need AVX-512 VBMI; only the VBMI kernel calls it.
    #[inline(always)]
    unsafe fn zmm4_u(&self, r: RowPtr, b: usize, tbl_u: __m512i) -> ([__m512i; 2], [__m512; 2]) {
        let (v0, s0) = self.zmm_u(r, b, tbl_u);
        let (v1, s1) = self.zmm_u(r, b + 2, tbl_u);
        ([v0, v1], [s0, s1])
    }
    /// The address of block `b` of a row (for prefetches it may lie past the row's end).
    fn block_addr(&self, r: RowPtr, b: usize) -> *const i8;
    /// The quad decode of this format, if it has one (the quad tile runs only then).
    fn quads(&self) -> Option<Quads> {
        None
    }
}

/// Prefetches the cache line at `p` (a row of the next tile, which may lie past the weight's end) into L2
/// (`_MM_HINT_T1`), not L1: on a 2-core Zen 4 VM two threads streamed MXFP4 at 27 GB/s and Q8_0 at 31 against
/// 19 and 21 with `_MM_HINT_T0` (stream_throughput, session 16; decode of the 20b GGUF 7.4 → 10.5 tok/s), the
/// L1 filling with lines of rows a tile ahead while this tile's loads wait for room. Every tile's prefetch of
/// its successor's rows goes through here.
#[inline(always)]
pub(super) unsafe fn prefetch_ahead(p: *const i8) {
    _mm_prefetch::<_MM_HINT_T1>(p);
}

/// `2^(e - 127)` for every E8M0 byte (a load instead of the branch-free bit assembly per block).
static E8M0: [f32; 256] = {
    let mut t = [0f32; 256];
    let mut e = 0;
    while e < 256 {
        t[e] = if e == 0 {
            f32::from_bits(1 << 22)
        } else {
            f32::from_bits((e as u32) << 23)
        };
        e += 1;
    }
    t
};

/// `2^(e - 127)` of an E8M0 byte (`2^-127` for `e = 0`), as every decode here gives it.
#[inline(always)]
pub(super) fn e8m0(e: u8) -> f32 {
    E8M0[usize::from(e)]
}

/// An IEEE half to f32 (F16C).
#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = u16::from_le_bytes([*p, *p.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// Lanes 0 and 1 of `v` spread to lanes 0–7 and 8–15.
#[inline(always)]
unsafe fn spread_pair(v: __m128) -> __m512 {
    let idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v))
}

/// The IEEE halves at `p0` and `p1` as 8-lane halves (one conversion for both).
#[inline(always)]
unsafe fn f16_pair(p0: *const u8, p1: *const u8) -> __m512 {
    let a = i32::from(p0.cast::<u16>().read_unaligned());
    let v = _mm_insert_epi16(
        _mm_cvtsi32_si128(a),
        i32::from(p1.cast::<u16>().read_unaligned()),
        1,
    );
    spread_pair(_mm_cvtph_ps(v))
}

/// The E8M0 bytes `e0`, `e1` times `unit` as 8-lane halves: `2^(e - 127)` is the float with exponent
/// field `e` (the maximum with `2^-127`'s bits covers `e = 0`), so the pair needs no table.
#[inline(always)]
unsafe fn e8m0_pair(e0: u8, e1: u8, unit: f32) -> __m512 {
    // Lanes 2 and 3 get 127 (1.0), not 0: a subnormal there would make the multiply take a slow
    // microcode path on every call.
    let v = _mm_cvtsi32_si128(i32::from(e0) | i32::from(e1) << 8 | 127 << 16 | 127 << 24);
    let bits = _mm_max_epu32(
        _mm_slli_epi32(_mm_cvtepu8_epi32(v), 23),
        _mm_set1_epi32(1 << 22),
    );
    spread_pair(_mm_mul_ps(_mm_castsi128_ps(bits), _mm_set1_ps(unit)))
}

/// Two 8-lane halves: `a` in lanes 0–7, `b` in 8–15.
#[inline(always)]
pub(super) unsafe fn halves(a: f32, b: f32) -> __m512 {
    _mm512_insertf32x8(_mm512_set1_ps(a), _mm256_set1_ps(b), 1)
}

/// 16 code bytes → 32 table values: low nibbles first, then high nibbles.
#[inline(always)]
unsafe fn nibbles_ymm(q: __m128i, tbl: __m256i) -> __m256i {
    let m4 = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(q, m4);
    let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m4);
    _mm256_shuffle_epi8(tbl, _mm256_set_m128i(hi, lo))
}

/// 2 × 16 code bytes (block `b` in the low half) → lanes [b lo, b hi, b+1 lo, b+1 hi] of table values.
#[inline(always)]
unsafe fn nibbles_zmm(q: __m256i, tbl: __m512i) -> __m512i {
    let z = _mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1);
    let z = _mm512_shuffle_i64x2(z, z, 0b11_01_10_00);
    _mm512_shuffle_epi8(tbl, _mm512_and_si512(z, _mm512_set1_epi8(0x0F)))
}

/// Byte indices of [`ggml_mxfp4_quad`]'s permutes: output byte `i` of a 512-bit register from the
/// codes of the blocks its 128-bit lane holds (each block's 16 code bytes twice: low nibbles, then high).
const fn quad_code_index(first: usize) -> [u8; 64] {
    let mut idx = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        idx[i] = quad_code_byte(first + i / 32, i % 16);
        i += 1;
    }
    idx
}

/// The two-register permute selector of code byte `byte` of block `block` of an MXFP4 quad (68 bytes: each
/// block an E8M0 scale, then its 16 code bytes), the quad loaded as two registers at bytes 0 and 52: bytes
/// past 63 come from the second one (selector bit 6).
pub(super) const fn quad_code_byte(block: usize, byte: usize) -> u8 {
    let pos = 17 * block + 1 + byte;
    if pos < 64 {
        pos as u8
    } else {
        64 + (pos - 52) as u8
    }
}

/// Which bytes hold the 4 E8M0 scales of a quad: 32-bit lane `k` gets scale `k % 4` in its low byte.
const fn quad_scale_index() -> [u8; 64] {
    let mut idx = [0u8; 64];
    let mut k = 0;
    while k < 16 {
        idx[4 * k] = (17 * (k % 4)) as u8;
        k += 1;
    }
    idx
}

/// The code gathers of a ggml MXFP4 quad: blocks 0–1 and 2–3.
struct QuadIndex {
    lo: [u8; 64],
    hi: [u8; 64],
}

static QUAD: QuadIndex = QuadIndex {
    lo: quad_code_index(0),
    hi: quad_code_index(2),
};
static QUAD_SCALES: [u8; 64] = quad_scale_index();

/// Four ggml MXFP4 blocks (68 bytes at `p`: E8M0 scale then 16 code bytes, low nibble = element `i`,
/// high = `i + 16`) as two [`Decode::zmm`] results, from one 512-bit and one 128-bit load (no byte read
/// past the quad). `vpermb` gathers each block's code bytes twice into its 128-bit lane pair, a 16-bit
/// shift by 0 or 4 per half brings the wanted nibble to bits 0–3, and `vpermb` on the table repeated
/// in all four 128-bit lanes looks it up (bits 4–5 of the index pick one of the four copies, so they
/// need no mask). The scales: one masked `vpermb` puts scale `k` in lanes `k`, `k + 4`, ..., then the
/// same bit assembly as [`e8m0_pair`] and two lane broadcasts.
#[inline(always)]
unsafe fn ggml_mxfp4_quad(p: *const u8, tbl: __m512i, unit: f32) -> ([__m512i; 2], [__m512; 2]) {
    let a = _mm512_loadu_si512(p.cast());
    let b = _mm512_castsi128_si512(_mm_loadu_si128(p.add(52).cast()));
    let shifts = _mm512_set_epi64(
        0x0004_0004_0004_0004,
        0x0004_0004_0004_0004,
        0,
        0,
        0x0004_0004_0004_0004,
        0x0004_0004_0004_0004,
        0,
        0,
    );
    let lo = _mm512_permutexvar_epi8(_mm512_loadu_si512(QUAD.lo.as_ptr().cast()), a);
    let hi = _mm512_permutex2var_epi8(a, _mm512_loadu_si512(QUAD.hi.as_ptr().cast()), b);
    let v0 = _mm512_permutexvar_epi8(_mm512_srlv_epi16(lo, shifts), tbl);
    let v1 = _mm512_permutexvar_epi8(_mm512_srlv_epi16(hi, shifts), tbl);
    let e = _mm512_maskz_permutexvar_epi8(
        0x1111_1111_1111_1111,
        _mm512_loadu_si512(QUAD_SCALES.as_ptr().cast()),
        a,
    );
    let bits = _mm512_max_epu32(_mm512_slli_epi32(e, 23), _mm512_set1_epi32(1 << 22));
    let s = _mm512_mul_ps(_mm512_castsi512_ps(bits), _mm512_set1_ps(unit));
    // (No closure for the two index vectors: a closure would not inherit the target features.)
    let s0 = _mm512_permutexvar_ps(
        _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
        s,
    );
    let s1 = _mm512_permutexvar_ps(
        _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2),
        s,
    );
    ([v0, v1], [s0, s1])
}

/// Byte indices of [`q8_0_quad`]'s code permutes: output byte `i` is code `i % 32` of block `first + i / 32`
/// of the quad (34 bytes a block: the f16 scale, then 32 codes). Blocks 0 and 1 come from the registers
/// loaded at bytes 0 and 64 (quad bytes 2..68 map to themselves); blocks 2 and 3 from those loaded at 64
/// and 72 (bytes 70..128 from the first, 128..136 from the second: selector bit 6).
const fn q8_0_code_index(first: usize) -> [u8; 64] {
    let mut idx = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        let pos = 34 * (first + i / 32) + 2 + i % 32;
        idx[i] = if first == 0 {
            pos as u8
        } else if pos < 128 {
            (pos - 64) as u8
        } else {
            64 + (pos - 72) as u8
        };
        i += 1;
    }
    idx
}

/// Which bytes of the registers loaded at quad bytes 0 and 64 hold the four f16 scales (at 0, 34, 68,
/// 102; a byte's quad offset is its selector): bytes 0..8 of the permute are the four halves in order.
const fn q8_0_scale_index() -> [u8; 64] {
    let mut idx = [0u8; 64];
    let mut k = 0;
    while k < 4 {
        idx[2 * k] = (34 * k) as u8;
        idx[2 * k + 1] = (34 * k + 1) as u8;
        k += 1;
    }
    idx
}

static Q8_0_QUAD_LO: [u8; 64] = q8_0_code_index(0);
static Q8_0_QUAD_HI: [u8; 64] = q8_0_code_index(2);
static Q8_0_QUAD_SCALES: [u8; 64] = q8_0_scale_index();

/// Four Q8_0 blocks (136 bytes at `p`) as two [`Decode::zmm_u`] results, from three 512-bit loads (at 0,
/// 64 and 72: no byte read past the quad): `vpermt2b` gathers blocks 0–1 and 2–3 past their scales, a
/// third gathers the four f16 scales for one conversion. The two-blocks-at-a-time decode did two
/// unaligned 256-bit loads, an insert and a scale pair built from two scalar loads per two blocks.
#[inline(always)]
unsafe fn q8_0_quad(p: *const u8) -> ([__m512i; 2], [__m512; 2]) {
    let a = _mm512_loadu_si512(p.cast());
    let b = _mm512_loadu_si512(p.add(64).cast());
    let c = _mm512_loadu_si512(p.add(72).cast());
    let flip = _mm512_set1_epi8(-128);
    let lo = _mm512_permutex2var_epi8(a, _mm512_loadu_si512(Q8_0_QUAD_LO.as_ptr().cast()), b);
    let hi = _mm512_permutex2var_epi8(b, _mm512_loadu_si512(Q8_0_QUAD_HI.as_ptr().cast()), c);
    let halves =
        _mm512_permutex2var_epi8(a, _mm512_loadu_si512(Q8_0_QUAD_SCALES.as_ptr().cast()), b);
    let s = _mm512_castps128_ps512(_mm_cvtph_ps(_mm512_castsi512_si128(halves)));
    let s0 = _mm512_permutexvar_ps(
        _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
        s,
    );
    let s1 = _mm512_permutexvar_ps(
        _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2),
        s,
    );
    (
        [_mm512_xor_si512(lo, flip), _mm512_xor_si512(hi, flip)],
        [s0, s1],
    )
}

/// Whether a 4-bit table's values are small enough for the MXFP4 quad tile (at most
/// [`QUAD_TABLE_MAX`] in magnitude, so a lane's eight products stay exact).
fn quad_table(table: &[i8; 16]) -> bool {
    table
        .iter()
        .all(|v| v.unsigned_abs() <= QUAD_TABLE_MAX.unsigned_abs())
}

#[derive(Clone, Copy)]
pub(super) struct Ggml4<'a> {
    blocks: RowBytes<'a>,
    table: [i8; 16],
    unit: f32,
    scale: BlockScale,
}

impl Ggml4<'_> {
    #[inline(always)]
    fn block_bytes(&self) -> usize {
        scale_bytes(self.scale) + 16
    }

    #[inline(always)]
    unsafe fn scale_at(&self, p: *const u8) -> f32 {
        let s = match self.scale {
            BlockScale::E8M0 => E8M0[usize::from(*p)],
            BlockScale::F16 => f16_at(p),
        };
        s * self.unit
    }
}

impl Decode for Ggml4<'_> {
    fn table(&self) -> [i8; 16] {
        self.table
    }
    #[inline(always)]
    fn block_addr(&self, r: RowPtr, b: usize) -> *const i8 {
        r.data.wrapping_add(b * self.block_bytes()).cast()
    }
    #[inline(always)]
    fn rows(&self) -> usize {
        self.blocks.rows()
    }
    #[inline(always)]
    fn row(&self, j: usize) -> RowPtr {
        RowPtr {
            data: self.blocks.row(j).as_ptr(),
            scales: std::ptr::null(),
        }
    }
    #[inline(always)]
    unsafe fn ymm(&self, r: RowPtr, b: usize, tbl: __m256i) -> (__m256i, f32) {
        let p = r.data.add(b * self.block_bytes());
        let q = _mm_loadu_si128(p.add(scale_bytes(self.scale)).cast());
        (nibbles_ymm(q, tbl), self.scale_at(p))
    }
    #[inline(always)]
    unsafe fn zmm(&self, r: RowPtr, b: usize, tbl: __m512i) -> (__m512i, __m512) {
        let bb = self.block_bytes();
        let p0 = r.data.add(b * bb);
        let p1 = p0.add(bb);
        let sb = scale_bytes(self.scale);
        let q = _mm256_loadu2_m128i(p1.add(sb).cast(), p0.add(sb).cast());
        let s = match self.scale {
            BlockScale::E8M0 => e8m0_pair(*p0, *p1, self.unit),
            BlockScale::F16 => _mm512_mul_ps(f16_pair(p0, p1), _mm512_set1_ps(self.unit)),
        };
        (nibbles_zmm(q, tbl), s)
    }
    #[inline(always)]
    unsafe fn zmm4_u(&self, r: RowPtr, b: usize, tbl_u: __m512i) -> ([__m512i; 2], [__m512; 2]) {
        match self.scale {
            BlockScale::E8M0 => ggml_mxfp4_quad(r.data.add(b * 17), tbl_u, self.unit),
            BlockScale::F16 => {
                let (v0, s0) = self.zmm_u(r, b, tbl_u);
                let (v1, s1) = self.zmm_u(r, b + 2, tbl_u);
                ([v0, v1], [s0, s1])
            }
        }
    }
    #[inline(always)]
    fn quads(&self) -> Option<Quads> {
        (self.scale == BlockScale::E8M0 && quad_table(&self.table))
            .then_some(Quads::Mxfp4 { unit: self.unit })
    }
}

#[derive(Clone, Copy)]
pub(super) struct Hf4<'a> {
    codes: RowBytes<'a>,
    scales: RowBytes<'a>,
    table: [i8; 16],
    unit: f32,
}

impl Decode for Hf4<'_> {
    fn table(&self) -> [i8; 16] {
        self.table
    }
    #[inline(always)]
    fn block_addr(&self, r: RowPtr, b: usize) -> *const i8 {
        r.data.wrapping_add(16 * b).cast()
    }
    #[inline(always)]
    fn rows(&self) -> usize {
        self.codes.rows()
    }
    #[inline(always)]
    fn row(&self, j: usize) -> RowPtr {
        RowPtr {
            data: self.codes.row(j).as_ptr(),
            scales: self.scales.row(j).as_ptr(),
        }
    }
    #[inline(always)]
    unsafe fn ymm(&self, r: RowPtr, b: usize, tbl: __m256i) -> (__m256i, f32) {
        let q = _mm_loadu_si128(r.data.add(16 * b).cast());
        (
            nibbles_ymm(q, tbl),
            E8M0[usize::from(*r.scales.add(b))] * self.unit,
        )
    }
    #[inline(always)]
    unsafe fn zmm(&self, r: RowPtr, b: usize, tbl: __m512i) -> (__m512i, __m512) {
        let q = _mm256_loadu_si256(r.data.add(16 * b).cast());
        let s = e8m0_pair(*r.scales.add(b), *r.scales.add(b + 1), self.unit);
        (nibbles_zmm(q, tbl), s)
    }
    #[inline(always)]
    fn quads(&self) -> Option<Quads> {
        quad_table(&self.table).then_some(Quads::HfMxfp4 { unit: self.unit })
    }
}

#[derive(Clone, Copy)]
pub(super) struct Q8<'a> {
    blocks: RowBytes<'a>,
}

impl Decode for Q8<'_> {
    fn table(&self) -> [i8; 16] {
        [0; 16]
    }
    #[inline(always)]
    unsafe fn zmm_u(&self, r: RowPtr, b: usize, tbl_u: __m512i) -> (__m512i, __m512) {
        let (v, s) = self.zmm(r, b, tbl_u);
        (_mm512_xor_si512(v, _mm512_set1_epi8(-128)), s)
    }
    #[inline(always)]
    unsafe fn ymm_u(&self, r: RowPtr, b: usize, tbl_u: __m256i) -> (__m256i, f32) {
        let (v, s) = self.ymm(r, b, tbl_u);
        (_mm256_xor_si256(v, _mm256_set1_epi8(-128)), s)
    }
    #[inline(always)]
    unsafe fn zmm4_u(&self, r: RowPtr, b: usize, _tbl_u: __m512i) -> ([__m512i; 2], [__m512; 2]) {
        q8_0_quad(r.data.add(b * Q8_0_BLOCK_BYTES))
    }
    #[inline(always)]
    fn block_addr(&self, r: RowPtr, b: usize) -> *const i8 {
        r.data.wrapping_add(b * Q8_0_BLOCK_BYTES).cast()
    }
    #[inline(always)]
    fn quads(&self) -> Option<Quads> {
        Some(Quads::Q8_0)
    }
    #[inline(always)]
    fn rows(&self) -> usize {
        self.blocks.rows()
    }
    #[inline(always)]
    fn row(&self, j: usize) -> RowPtr {
        RowPtr {
            data: self.blocks.row(j).as_ptr(),
            scales: std::ptr::null(),
        }
    }
    #[inline(always)]
    unsafe fn ymm(&self, r: RowPtr, b: usize, _tbl: __m256i) -> (__m256i, f32) {
        let p = r.data.add(b * Q8_0_BLOCK_BYTES);
        (_mm256_loadu_si256(p.add(2).cast()), f16_at(p))
    }
    #[inline(always)]
    unsafe fn zmm(&self, r: RowPtr, b: usize, _tbl: __m512i) -> (__m512i, __m512) {
        let p0 = r.data.add(b * Q8_0_BLOCK_BYTES);
        let p1 = p0.add(Q8_0_BLOCK_BYTES);
        let lo = _mm256_loadu_si256(p0.add(2).cast());
        let hi = _mm256_loadu_si256(p1.add(2).cast());
        (
            _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1),
            f16_pair(p0, p1),
        )
    }
}

/// Something to do with a weight's decoder, whatever its format.
pub(super) trait WithDecoder {
    /// The result.
    type Out;
    /// Does it with decoder `d`.
    ///
    /// # Safety
    /// As the implementation requires (the kernels need their CPU features).
    unsafe fn with<D: Decode>(self, d: D) -> Self::Out;
}

/// Runs `f` with the decoder of `w`.
///
/// # Safety
/// As `f` requires.
pub(super) unsafe fn with_decoder<F: WithDecoder>(w: &IntWeight<'_>, f: F) -> F::Out {
    match *w {
        IntWeight::Ggml4 {
            blocks,
            table,
            scale,
        } => f.with(Ggml4 {
            blocks,
            table: table.values,
            unit: table.unit,
            scale,
        }),
        IntWeight::Hf4 {
            codes,
            scales,
            table,
        } => f.with(Hf4 {
            codes,
            scales,
            table: table.values,
            unit: table.unit,
        }),
        IntWeight::Q8_0 { blocks } => f.with(Q8 { blocks }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e8m0_decodes_are_exact() {
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
        unsafe fn pair(e0: u8, e1: u8) -> [f32; 16] {
            let mut out = [0f32; 16];
            _mm512_storeu_ps(out.as_mut_ptr(), e8m0_pair(e0, e1, 0.5));
            out
        }
        let avx512 = super::super::CpuIsa::Avx512.supported();
        for e in 0..=255u8 {
            let want = gptoss_formats::tensor::e8m0_to_f32(e);
            assert_eq!(E8M0[usize::from(e)], want);
            if avx512 {
                // SAFETY: AVX-512 was detected.
                let v = unsafe { pair(e, 255 - e) };
                let other = gptoss_formats::tensor::e8m0_to_f32(255 - e) * 0.5;
                assert!(
                    v[..8].iter().all(|&x| x == want * 0.5) && v[8..].iter().all(|&x| x == other),
                    "{e}"
                );
            }
        }
    }
}
