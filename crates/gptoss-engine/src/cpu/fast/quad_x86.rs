//! The tile for ggml MXFP4 and Q8_0 on AVX-512 VBMI: four blocks a step, each 128-bit lane of the int32
//! dot one block, so that the weights' scales need no broadcasts and the f32 work (convert, scale, FMA)
//! is done once per four blocks instead of once per two. A weight row's quad is decoded once and dotted
//! with every activation row of the tile (one for decode, up to four for prompts). MXFP4 is dotted in
//! two int8 passes (`vpdpbusd` on the activation's codes `q`, then remainders `r`), each block's 16 code
//! bytes gathered into its lane and looked up once per nibble; Q8_0 is gathered straight into signed
//! int16 lanes and dotted by `vpdpwssd` with `256 q + r` (its ±128 codes would take a lane of eight
//! products past 2^24). The activation planes are laid out per quad by `acts::quad_words`. Every int32
//! lane is an exact partial sum of one block's integer dot (below 2^24, so its f32 is exact too); the
//! lanes group a block's products differently from the pair tiles, so the f32 sums can differ from
//! theirs in the last bits. Blocks past the last whole quad go through the pair kernel.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::acts::{quad_position, QuantRef, QUAD_ELEMS, QUAD_LANES};
use super::decode_x86::{prefetch_ahead, quad_code_byte, Decode, RowPtr};
use super::int8_x86::{dpwssd2, table_u, vnni_finish, Tile};
use super::weights::BLOCK;

/// Which quad decode a weight format has.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Quads {
    /// ggml 4-bit blocks with an E8M0 scale (MXFP4) whose table values are at most 64 in magnitude, so
    /// that a lane's eight products stay below 2^24; `unit` is the table's.
    Mxfp4 { unit: f32 },
    /// HF / OpenAI MXFP4 (codes apart from their E8M0 scales), under the same bound.
    HfMxfp4 { unit: f32 },
    /// ggml Q8_0.
    Q8_0,
}

/// The largest 4-bit table value (in magnitude) the MXFP4 quad takes: 8 × 64 × 32,639 (the largest
/// `|256 q + r|`) is below 2^24.
pub(super) const QUAD_TABLE_MAX: i8 = 64;

/// The activation side of one quad: four registers of the format's planes, the lane corrections (for
/// weights offset to unsigned) and the lane units times the weight table's unit.
pub(super) struct QuadX {
    planes: [__m512i; 4],
    offsets: __m512i,
    units: __m512,
}

/// A format's quad step: decode four blocks of one weight row, then add their scaled dots with an
/// activation row to `acc` (once per activation row the decoded quad meets).
pub(super) trait QuadFormat {
    /// One weight row's quad as decoded: vector registers only, so all-zero bits are a valid value.
    type Row: Copy;
    /// The four activation registers of quad `k` of row `x` and the lane corrections the step needs.
    unsafe fn activations(x: &QuantRef<'_>, k: usize) -> ([__m512i; 4], __m512i);
    /// The quad of blocks `b..b + 4` of row `r`, decoded.
    unsafe fn decode<D: Decode>(d: &D, r: RowPtr, b: usize, tbl_u: __m512i) -> Self::Row;
    /// `acc + Σ_lanes dot × w_scale × x_unit` for a decoded quad and one activation row.
    unsafe fn dot(w: &Self::Row, x: &QuadX, acc: __m512) -> __m512;
    /// Prefetches the quad of blocks `b..b + 4` of row `r` (which may lie past the weight) into L2
    /// (`prefetch_ahead`): every cache line it touches that the quads before it did not (68 bytes for
    /// ggml MXFP4, 136 for Q8_0, 64 and 4 for HF MXFP4).
    unsafe fn prefetch<D: Decode>(d: &D, r: RowPtr, b: usize);
}

/// ggml MXFP4 quads ([`Quads::Mxfp4`]).
pub(super) struct Mxfp4Quad;

/// A decoded MXFP4 quad of one weight row: positions `0..16` (`w0`) and `16..32` (`w1`) of block `L`
/// in 128-bit lane `L`, unsigned (+128), and each int32 lane's `2^(e - 127)`.
#[derive(Clone, Copy)]
pub(super) struct Mxfp4Row {
    w0: __m512i,
    w1: __m512i,
    scale: __m512,
}

impl Mxfp4Row {
    /// From `codes` (block `L`'s 16 code bytes in 128-bit lane `L`) and `e` (block `L`'s E8M0 byte in
    /// the low byte of int32 lanes `4L..4L + 4`, zeros above): two table lookups (`vpermb` on the table
    /// repeated in all four 128-bit lanes, so bits 4–5 of an index do not matter; the high nibbles after
    /// a 16-bit shift by 4) and the bit assembly of `e8m0_pair` (the maximum with 2^-127's bits covers
    /// `e = 0`).
    #[inline(always)]
    unsafe fn of(codes: __m512i, e: __m512i, tbl_u: __m512i) -> Self {
        Mxfp4Row {
            w0: _mm512_permutexvar_epi8(codes, tbl_u),
            w1: _mm512_permutexvar_epi8(_mm512_srli_epi16(codes, 4), tbl_u),
            scale: _mm512_castsi512_ps(_mm512_max_epu32(
                _mm512_slli_epi32(e, 23),
                _mm512_set1_epi32(1 << 22),
            )),
        }
    }
}

/// HF MXFP4 quads ([`Quads::HfMxfp4`]): the same registers and dot as [`Mxfp4Quad`] (block `L`'s codes,
/// low nibbles positions `0..16` of the evens-then-odds layout, high nibbles `16..32`), read from the
/// row's 64 contiguous code bytes and its 4 scale bytes.
pub(super) struct HfMxfp4Quad;

/// Byte 0 of int32 lane `i` gets byte `i / 4` (the E8M0 scale of block `i / 4` of an HF quad).
const fn hf_scale_index() -> [u8; 64] {
    let mut idx = [0u8; 64];
    let mut i = 0;
    while i < 16 {
        idx[4 * i] = (i / 4) as u8;
        i += 1;
    }
    idx
}

static HF_SCALES: [u8; 64] = hf_scale_index();

impl QuadFormat for HfMxfp4Quad {
    type Row = Mxfp4Row;

    #[inline(always)]
    unsafe fn activations(x: &QuantRef<'_>, k: usize) -> ([__m512i; 4], __m512i) {
        Mxfp4Quad::activations(x, k)
    }

    /// One 512-bit load holds the four blocks' codes, each block already in its 128-bit lane; the four
    /// scale bytes come as one 32-bit load and one zeroing `vpermb`.
    #[inline(always)]
    unsafe fn decode<D: Decode>(_d: &D, r: RowPtr, b: usize, tbl_u: __m512i) -> Mxfp4Row {
        let codes = _mm512_loadu_si512(r.data.add(16 * b).cast());
        let four = r.scales.add(b).cast::<i32>().read_unaligned();
        let e = permb_z(
            0x1111_1111_1111_1111,
            _mm512_loadu_si512(HF_SCALES.as_ptr().cast()),
            _mm512_castsi128_si512(_mm_cvtsi32_si128(four)),
        );
        Mxfp4Row::of(codes, e, tbl_u)
    }

    #[inline(always)]
    unsafe fn dot(w: &Mxfp4Row, x: &QuadX, acc: __m512) -> __m512 {
        Mxfp4Quad::dot(w, x, acc)
    }

    #[inline(always)]
    unsafe fn prefetch<D: Decode>(_d: &D, r: RowPtr, b: usize) {
        let codes = r.data.wrapping_add(16 * b).cast::<i8>();
        prefetch_ahead(codes);
        prefetch_ahead(codes.wrapping_add(63));
        prefetch_ahead(r.scales.wrapping_add(b).cast());
    }
}

/// ggml Q8_0 quads.
pub(super) struct Q8Quad;

/// A decoded Q8_0 quad of one weight row: four registers of signed int16 codes in [`quad_position`]'s
/// order and each int32 lane's f16 scale.
#[derive(Clone, Copy)]
pub(super) struct Q8Row {
    w: [__m512i; 4],
    scale: __m512,
}

/// The gather of an MXFP4 quad's code bytes: block `L`'s 16 in 128-bit lane `L`, from the registers
/// loaded at quad bytes 0 and 52 (selector bit 6).
const fn mxfp4_code_index() -> [u8; 64] {
    let mut idx = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        idx[i] = quad_code_byte(i / 16, i % 16);
        i += 1;
    }
    idx
}

/// Byte 0 of int32 lane `i` gets the E8M0 byte of block `i / 4` of the quad.
const fn mxfp4_scale_index() -> [u8; 64] {
    let mut idx = [0u8; 64];
    let mut i = 0;
    while i < 16 {
        idx[4 * i] = (17 * (i / 4)) as u8;
        i += 1;
    }
    idx
}

static MXFP4_CODES: [u8; 64] = mxfp4_code_index();
static MXFP4_SCALES: [u8; 64] = mxfp4_scale_index();

/// Odd bytes of a 512-bit register: the high bytes of its int16 lanes.
const ODD: u64 = 0xAAAA_AAAA_AAAA_AAAA;

impl QuadFormat for Mxfp4Quad {
    type Row = Mxfp4Row;

    /// The codes `q` and remainders `r` (`acts::QuadRow::codes`: positions `0..16` of each block, then
    /// `16..32`) and the `-128 Σ (256 q + r)` corrections.
    #[inline(always)]
    unsafe fn activations(x: &QuantRef<'_>, k: usize) -> ([__m512i; 4], __m512i) {
        let (c, r) = (
            x.quad_codes.as_ptr().add(k * QUAD_ELEMS),
            x.quad_rems.as_ptr().add(k * QUAD_ELEMS),
        );
        let planes = [
            _mm512_loadu_si512(c.cast()),
            _mm512_loadu_si512(c.add(64).cast()),
            _mm512_loadu_si512(r.cast()),
            _mm512_loadu_si512(r.add(64).cast()),
        ];
        let offsets = _mm512_loadu_si512(x.quad_offsets.as_ptr().add(k * QUAD_LANES).cast());
        (planes, offsets)
    }

    /// One 512-bit and one 128-bit load (no byte past the quad); one gather puts each block's 16 code
    /// bytes in its lane; two table lookups (`vpermb` on the table repeated in all four 128-bit lanes,
    /// so bits 4–5 of an index do not matter; the high nibbles after a 16-bit shift by 4) give positions
    /// `0..16` and `16..32` + 128, unsigned. Then, as in the pair kernel, `vpdpbusd` on `q`, a shift by
    /// 8 and the correction, `vpdpbusd` on `r`: 6 ops where the int16 form needed 8 (two gathers, two
    /// shifts, four zeroing lookups) and 4 `vpdpwssd` (in L3, one thread: +6–21%, median +18%). The
    /// scales: one zeroing gather puts block `L`'s E8M0 byte in lanes `4L..4L + 4`, the bit assembly of
    /// `e8m0_pair` (the maximum with 2^-127's bits covers `e = 0`) makes `2^(e - 127)`.
    #[inline(always)]
    unsafe fn decode<D: Decode>(d: &D, r: RowPtr, b: usize, tbl_u: __m512i) -> Mxfp4Row {
        let p = d.block_addr(r, b).cast::<u8>();
        let a = _mm512_loadu_si512(p.cast());
        let b = _mm512_castsi128_si512(_mm_loadu_si128(p.add(52).cast()));
        let g = _mm512_permutex2var_epi8(a, _mm512_loadu_si512(MXFP4_CODES.as_ptr().cast()), b);
        let e = permb_z(
            0x1111_1111_1111_1111,
            _mm512_loadu_si512(MXFP4_SCALES.as_ptr().cast()),
            a,
        );
        Mxfp4Row::of(g, e, tbl_u)
    }

    #[inline(always)]
    unsafe fn dot(w: &Mxfp4Row, x: &QuadX, acc: __m512) -> __m512 {
        let [q0, q1, r0, r1] = x.planes;
        let dq = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w.w0, q0);
        let dq = _mm512_dpbusd_epi32(dq, w.w1, q1);
        let t = _mm512_add_epi32(_mm512_slli_epi32(dq, 8), x.offsets);
        let dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(t, w.w0, r0), w.w1, r1);
        let scale = _mm512_mul_ps(w.scale, x.units);
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc)
    }

    #[inline(always)]
    unsafe fn prefetch<D: Decode>(d: &D, r: RowPtr, b: usize) {
        let p = d.block_addr(r, b);
        prefetch_ahead(p);
        prefetch_ahead(p.wrapping_add(64));
    }
}

/// The gather of a Q8_0 quad's codes for word register `j`: position [`quad_position`]`(j, t)` of
/// block `L` into the odd byte of word `t` of lane `L` (the even bytes are zeroed, so a 16-bit
/// arithmetic shift by 8 makes the signed word). Registers 0 and 2 (positions below 16) read the
/// registers loaded at quad bytes 0 and 64, registers 1 and 3 those loaded at 8 and 72, so nothing past
/// the quad is read.
const fn q8_0_code_index(j: usize) -> [u8; 64] {
    let base = 8 * (j % 2);
    let mut idx = [0u8; 64];
    let mut i = 1;
    while i < 64 {
        let (lane, t) = (i / 16, i % 16 / 2);
        idx[i] = (34 * lane + 2 + quad_position(j, t) - base) as u8;
        i += 2;
    }
    idx
}

/// Words 0..16 get the f16 scale of block `i / 4` (bytes 0, 34, 68 and 102 of the quad).
const fn q8_0_scale_index() -> [u8; 64] {
    let mut idx = [0u8; 64];
    let mut i = 0;
    while i < 16 {
        idx[2 * i] = (34 * (i / 4)) as u8;
        idx[2 * i + 1] = (34 * (i / 4) + 1) as u8;
        i += 1;
    }
    idx
}

static Q8_0_CODES: [[u8; 64]; 4] = [
    q8_0_code_index(0),
    q8_0_code_index(1),
    q8_0_code_index(2),
    q8_0_code_index(3),
];
static Q8_0_SCALES: [u8; 64] = q8_0_scale_index();

impl QuadFormat for Q8Quad {
    type Row = Q8Row;

    /// The activation's `256 q + r` words in [`quad_position`]'s order (no correction: the words and
    /// weights are both signed).
    #[inline(always)]
    unsafe fn activations(x: &QuantRef<'_>, k: usize) -> ([__m512i; 4], __m512i) {
        let w = x.quad_words.as_ptr().add(k * QUAD_ELEMS);
        let planes = [
            _mm512_loadu_si512(w.cast()),
            _mm512_loadu_si512(w.add(32).cast()),
            _mm512_loadu_si512(w.add(64).cast()),
            _mm512_loadu_si512(w.add(96).cast()),
        ];
        (planes, _mm512_setzero_si512())
    }

    /// Four 512-bit loads (at quad bytes 0, 64, 8 and 72: nothing past the quad), four zeroing gathers
    /// of the codes into the high bytes of int16 lanes and four shifts make signed words (no correction
    /// needed); two accumulators of two `vpdpwssd` each keep every lane at four products (|w| ≤ 128,
    /// so below 2^24). One gather and one conversion give every lane its block's f16 scale.
    #[inline(always)]
    unsafe fn decode<D: Decode>(d: &D, r: RowPtr, b: usize, _tbl_u: __m512i) -> Q8Row {
        let p = d.block_addr(r, b).cast::<u8>();
        let a = _mm512_loadu_si512(p.cast());
        let b = _mm512_loadu_si512(p.add(64).cast());
        let a8 = _mm512_loadu_si512(p.add(8).cast());
        let b8 = _mm512_loadu_si512(p.add(72).cast());
        // (No closure for the index loads: a closure would not inherit the target features.)
        let idx = [
            _mm512_loadu_si512(Q8_0_CODES[0].as_ptr().cast()),
            _mm512_loadu_si512(Q8_0_CODES[1].as_ptr().cast()),
            _mm512_loadu_si512(Q8_0_CODES[2].as_ptr().cast()),
            _mm512_loadu_si512(Q8_0_CODES[3].as_ptr().cast()),
        ];
        let w = [
            _mm512_srai_epi16(_mm512_maskz_permutex2var_epi8(ODD, a, idx[0], b), 8),
            _mm512_srai_epi16(_mm512_maskz_permutex2var_epi8(ODD, a8, idx[1], b8), 8),
            _mm512_srai_epi16(_mm512_maskz_permutex2var_epi8(ODD, a, idx[2], b), 8),
            _mm512_srai_epi16(_mm512_maskz_permutex2var_epi8(ODD, a8, idx[3], b8), 8),
        ];
        let halves =
            _mm512_permutex2var_epi8(a, _mm512_loadu_si512(Q8_0_SCALES.as_ptr().cast()), b);
        Q8Row {
            w,
            scale: _mm512_cvtph_ps(_mm512_castsi512_si256(halves)),
        }
    }

    #[inline(always)]
    unsafe fn dot(w: &Q8Row, x: &QuadX, acc: __m512) -> __m512 {
        let (zero, xw, ww) = (_mm512_setzero_si512(), &x.planes, &w.w);
        let lo = dpwssd2(zero, (ww[0], xw[0]), (ww[1], xw[1]));
        let hi = dpwssd2(zero, (ww[2], xw[2]), (ww[3], xw[3]));
        let scale = _mm512_mul_ps(w.scale, x.units);
        let acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), scale, acc);
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), scale, acc)
    }

    #[inline(always)]
    unsafe fn prefetch<D: Decode>(d: &D, r: RowPtr, b: usize) {
        let p = d.block_addr(r, b);
        prefetch_ahead(p);
        prefetch_ahead(p.wrapping_add(64));
        prefetch_ahead(p.wrapping_add(128));
    }
}

/// `vpermb` with zeroing: byte `i` is `tbl[idx[i] & 63]` where bit `i` of `mask` is set, else 0. In
/// assembly because LLVM splits `_mm512_maskz_permutexvar_epi8` into a permute and an AND (one more op
/// per quad and weight row).
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
#[inline]
unsafe fn permb_z(mask: u64, idx: __m512i, tbl: __m512i) -> __m512i {
    let out;
    std::arch::asm!(
        "vpermb {out}{{{k}}}{{z}}, {idx}, {tbl}",
        out = lateout(zmm_reg) out,
        k = in(kreg) mask,
        idx = in(zmm_reg) idx,
        tbl = in(zmm_reg) tbl,
        options(pure, nomem, nostack, preserves_flags),
    );
    out
}

/// The quad tile: the whole quads of `R` weight rows × `C` activation rows by [`QuadFormat`] `F` (each
/// quad of a weight row decoded once and dotted with every activation row), then the last pairs and odd
/// block by the VNNI pair kernel. Every (weight row, activation row) result is the same ops in the same
/// order whatever the tile's shape, so a row's outputs do not depend on which rows share its step.
pub(super) struct QuadTile<F>(std::marker::PhantomData<F>);

impl<F: QuadFormat> Tile for QuadTile<F> {
    #[inline(always)]
    unsafe fn run<D: Decode, const R: usize, const C: usize>(
        d: &D,
        (rows, ahead): ([RowPtr; R], [RowPtr; R]),
        xs: [QuantRef<'_>; C],
        nb: usize,
    ) -> [[f32; C]; R] {
        let unit = match d.quads() {
            Some(Quads::Mxfp4 { unit } | Quads::HfMxfp4 { unit }) => unit,
            _ => 1.0,
        };
        let (tbl_u, unit) = (table_u(d), _mm512_set1_ps(unit));
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let quads = nb * BLOCK / QUAD_ELEMS;
        for k in 0..quads {
            if C == 1 {
                // One activation row: each weight row decoded and dotted in turn (decode, the streaming
                // case, keeps the 4-row interleave it was tuned with).
                let xq = quad_x::<F>(&xs[0], k, unit);
                for r in 0..R {
                    // The next tile's rows, while this one runs (rows are short: no row starts cold).
                    F::prefetch(d, ahead[r], 4 * k);
                    acc[r][0] = F::dot(&F::decode(d, rows[r], 4 * k, tbl_u), &xq, acc[r][0]);
                }
            } else {
                // SAFETY: `F::Row` is vector registers only, for which zero bits are a value.
                let mut w: [F::Row; R] = std::mem::zeroed();
                for r in 0..R {
                    F::prefetch(d, ahead[r], 4 * k);
                    w[r] = F::decode(d, rows[r], 4 * k, tbl_u);
                }
                for c in 0..C {
                    let xq = quad_x::<F>(&xs[c], k, unit);
                    for r in 0..R {
                        acc[r][c] = F::dot(&w[r], &xq, acc[r][c]);
                    }
                }
            }
        }
        vnni_finish(d, (rows, ahead), xs, (4 * quads, nb), acc)
    }
}

/// Quad `k` of activation row `x` as `F` reads it, its lane units times the weight table's `unit`.
#[inline(always)]
unsafe fn quad_x<F: QuadFormat>(x: &QuantRef<'_>, k: usize, unit: __m512) -> QuadX {
    let (planes, offsets) = F::activations(x, k);
    QuadX {
        planes,
        offsets,
        units: _mm512_mul_ps(
            _mm512_loadu_ps(x.quad_units.as_ptr().add(k * QUAD_LANES)),
            unit,
        ),
    }
}
