//! The x86 int8 kernels: a tile of up to 4 weight rows × 4 activation rows, each weight block decoded to
//! int8 once (a nibble byte shuffle for 4-bit tables, a load for Q8_0) and dotted with every activation
//! row's codes and remainders; the exact int32 `256 Σ w q + Σ w r` per lane (≤ 2^24, so its f32 is
//! exact) is scaled by the weight's scale × the activation's unit into f32 lanes. AVX-512 VNNI
//! (`vpdpbusd`, two blocks per 512-bit op, activations offset to unsigned with the offset cancelled in
//! the accumulator's initial value) where present, else AVX2 (`vpmaddubsw` on |w| and sign(x, w), as
//! llama.cpp does). Both give exactly the integer block dots of the scalar path (`portable.rs`).

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::acts::{QuantRef, QuantView};
use super::weights::{scale_bytes, BlockScale, IntWeight, RowBytes, BLOCK};
use super::{OutRows, TILE_COLS};
use gptoss_formats::tensor::Q8_0_BLOCK_BYTES;

/// One weight row's bytes: inline blocks, or codes plus separate scales.
#[derive(Clone, Copy)]
struct RowPtr {
    data: *const u8,
    scales: *const u8,
}

#[cfg(test)]
#[test]
fn e8m0_decodes_are_exact() {
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
    unsafe fn pair(e0: u8, e1: u8) -> [f32; 16] {
        let mut out = [0f32; 16];
        _mm512_storeu_ps(out.as_mut_ptr(), e8m0_pair(e0, e1, 0.5));
        out
    }
    let avx512 = super::CpuIsa::Avx512.supported();
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

/// A weight format as the SIMD kernels decode it. Methods are inlined into the target-feature kernels.
trait Decode: Copy {
    /// The 16-entry int8 table (zeros for Q8_0).
    fn table(&self) -> [i8; 16];
    /// Row `j`'s pointers.
    fn row(&self, j: usize) -> RowPtr;
    /// Block `b` of a row as 32 int8 (layout order) and its scale. Needs AVX2 + F16C.
    unsafe fn ymm(&self, r: RowPtr, b: usize, tbl: __m256i) -> (__m256i, f32);
    /// Blocks `b` and `b + 1` (128-bit lanes 0–1 and 2–3) and their scales in 8-lane halves. Needs
    /// AVX-512 F/BW.
    unsafe fn zmm(&self, r: RowPtr, b: usize, tbl: __m512i) -> (__m512i, __m512);
    /// The address of block `b` of a row (prefetch only: it may lie past the row's end).
    fn block_addr(&self, r: RowPtr, b: usize) -> *const i8;
}

/// How far ahead in a row the VNNI tile prefetches, in blocks.
const PREFETCH_BLOCKS: usize = 24;

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
unsafe fn halves(a: f32, b: f32) -> __m512 {
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

#[derive(Clone, Copy)]
struct Ggml4<'a> {
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
}

#[derive(Clone, Copy)]
struct Hf4<'a> {
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
}

#[derive(Clone, Copy)]
struct Q8<'a> {
    blocks: RowBytes<'a>,
}

impl Decode for Q8<'_> {
    fn table(&self) -> [i8; 16] {
        [0; 16]
    }
    #[inline(always)]
    fn block_addr(&self, r: RowPtr, b: usize) -> *const i8 {
        r.data.wrapping_add(b * Q8_0_BLOCK_BYTES).cast()
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

/// Which instruction set a task runs with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum X86Level {
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F/BW/VL + VNNI (plus AVX2, FMA, F16C).
    Avx512Vnni,
}

/// One task: weight rows `rows` against every activation row, results (plus bias) into `out`.
///
/// # Safety
/// The CPU must support `level`'s features; `out` must hold `[acts.rows, n_out]` with `rows` inside
/// `n_out`, and no other thread may write those columns.
pub(crate) unsafe fn task(
    level: X86Level,
    w: &IntWeight<'_>,
    acts: &QuantView<'_>,
    rows: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    out: OutRows,
) {
    let job = Job {
        acts,
        rows,
        bias,
        out,
    };
    match (*w, level) {
        (
            IntWeight::Ggml4 {
                blocks,
                table,
                scale,
            },
            l,
        ) => {
            let d = Ggml4 {
                blocks,
                table: table.values,
                unit: table.unit,
                scale,
            };
            run(l, d, &job)
        }
        (
            IntWeight::Hf4 {
                codes,
                scales,
                table,
            },
            l,
        ) => {
            let d = Hf4 {
                codes,
                scales,
                table: table.values,
                unit: table.unit,
            };
            run(l, d, &job)
        }
        (IntWeight::Q8_0 { blocks }, l) => run(l, Q8 { blocks }, &job),
    }
}

struct Job<'a> {
    acts: &'a QuantView<'a>,
    rows: std::ops::Range<usize>,
    bias: Option<&'a [f32]>,
    out: OutRows,
}

unsafe fn run<D: Decode>(level: X86Level, d: D, job: &Job<'_>) {
    match level {
        X86Level::Avx2 => run_avx2(d, job),
        X86Level::Avx512Vnni => run_vnni(d, job),
    }
}

// Tile shapes (weight rows × activation rows) that keep every accumulator in a register: AVX2 has 16
// vector registers (8 accumulators, 2 rows × (w, |w|), temporaries), AVX-512 32 (12 accumulators, 3
// rows × (w, offset, scale), temporaries); 4 × 4 spilled accumulators to the stack.

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_avx2<D: Decode>(d: D, job: &Job<'_>) {
    sweep::<D, Avx2Tile, 2>(&d, job);
}

#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn run_vnni<D: Decode>(d: D, job: &Job<'_>) {
    sweep::<D, VnniTile, 3>(&d, job);
}

/// Walks the task's weight rows in groups of `R` for each group of [`TILE_COLS`] activation rows. (No
/// closures on this path: a closure does not inherit its function's target features, and the
/// intrinsics inside it would become calls.)
#[inline(always)]
unsafe fn sweep<D: Decode, T: Tile, const R: usize>(d: &D, job: &Job<'_>) {
    let mut c0 = 0;
    while c0 < job.acts.rows {
        let mut r0 = job.rows.start;
        while r0 < job.rows.end {
            let r1 = (r0 + R).min(job.rows.end);
            tiles::<D, T, R>(d, job, r0..r1, c0);
            r0 = r1;
        }
        c0 += TILE_COLS;
    }
}

/// A tile kernel over `R` weight rows × `C` activation rows.
trait Tile {
    unsafe fn run<D: Decode, const R: usize, const C: usize>(
        d: &D,
        rows: [RowPtr; R],
        xs: [QuantRef<'_>; C],
        nb: usize,
    ) -> [[f32; C]; R];
}

/// Runs the tile shape that fits rows `rows` (`R` or fewer) × activation rows `c0..`, and stores the
/// results.
#[inline(always)]
unsafe fn tiles<D: Decode, T: Tile, const R: usize>(
    d: &D,
    job: &Job<'_>,
    rows: std::ops::Range<usize>,
    c0: usize,
) {
    let cols = (job.acts.rows - c0).min(TILE_COLS);
    let full = rows.len() == R;
    match (full, cols) {
        (true, 4) => store(job, &rows, c0, one::<D, T, R, 4>(d, job, &rows, c0)),
        (true, 3) => store(job, &rows, c0, one::<D, T, R, 3>(d, job, &rows, c0)),
        (true, 2) => store(job, &rows, c0, one::<D, T, R, 2>(d, job, &rows, c0)),
        (true, _) => store(job, &rows, c0, one::<D, T, R, 1>(d, job, &rows, c0)),
        _ => {
            for j in rows {
                for c in c0..c0 + cols {
                    let r = one::<D, T, 1, 1>(d, job, &(j..j + 1), c);
                    store(job, &(j..j + 1), c, r);
                }
            }
        }
    }
}

#[inline(always)]
unsafe fn one<D: Decode, T: Tile, const R: usize, const C: usize>(
    d: &D,
    job: &Job<'_>,
    rows: &std::ops::Range<usize>,
    c0: usize,
) -> [[f32; C]; R] {
    let mut ptrs = [d.row(rows.start); R];
    for (r, p) in ptrs.iter_mut().enumerate() {
        *p = d.row(rows.start + r);
    }
    let mut xs = [job.acts.row(c0); C];
    for (c, x) in xs.iter_mut().enumerate() {
        *x = job.acts.row(c0 + c);
    }
    T::run::<D, R, C>(d, ptrs, xs, job.acts.n / BLOCK)
}

#[inline(always)]
unsafe fn store<const R: usize, const C: usize>(
    job: &Job<'_>,
    rows: &std::ops::Range<usize>,
    c0: usize,
    v: [[f32; C]; R],
) {
    for (r, vr) in v.iter().enumerate() {
        let j = rows.start + r;
        let b = job.bias.map_or(0.0, |b| b[j]);
        for (c, &x) in vr.iter().enumerate() {
            job.out.set(c0 + c, j, x + b);
        }
    }
}

/// Sum of 8 lanes.
#[inline(always)]
unsafe fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

struct Avx2Tile;

impl Tile for Avx2Tile {
    #[inline(always)]
    unsafe fn run<D: Decode, const R: usize, const C: usize>(
        d: &D,
        rows: [RowPtr; R],
        xs: [QuantRef<'_>; C],
        nb: usize,
    ) -> [[f32; C]; R] {
        let tbl = _mm256_broadcastsi128_si256(_mm_loadu_si128(d.table().as_ptr().cast()));
        let (ones, k256) = (_mm256_set1_epi16(1), _mm256_set1_epi16(256));
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        for b in 0..nb {
            let mut w = [_mm256_setzero_si256(); R];
            let mut aw = [_mm256_setzero_si256(); R];
            let mut sw = [0.0f32; R];
            for r in 0..R {
                let (v, s) = d.ymm(rows[r], b, tbl);
                (w[r], aw[r], sw[r]) = (v, _mm256_abs_epi8(v), s);
            }
            for (c, x) in xs.iter().enumerate() {
                let q = _mm256_loadu_si256(x.codes.as_ptr().add(BLOCK * b).cast());
                let rem = _mm256_loadu_si256(x.rems.as_ptr().add(BLOCK * b).cast());
                let dx = *x.scales.get_unchecked(b);
                for r in 0..R {
                    let pq = _mm256_maddubs_epi16(aw[r], _mm256_sign_epi8(q, w[r]));
                    let pr = _mm256_maddubs_epi16(aw[r], _mm256_sign_epi8(rem, w[r]));
                    let p32 =
                        _mm256_add_epi32(_mm256_madd_epi16(pq, k256), _mm256_madd_epi16(pr, ones));
                    let s = _mm256_set1_ps(sw[r] * dx);
                    acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), s, acc[r][c]);
                }
            }
        }
        let mut out = [[0.0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                out[r][c] = hsum256(acc[r][c]);
            }
        }
        out
    }
}

struct VnniTile;

impl Tile for VnniTile {
    #[inline(always)]
    unsafe fn run<D: Decode, const R: usize, const C: usize>(
        d: &D,
        rows: [RowPtr; R],
        xs: [QuantRef<'_>; C],
        nb: usize,
    ) -> [[f32; C]; R] {
        let tbl = _mm512_broadcast_i32x4(_mm_loadu_si128(d.table().as_ptr().cast()));
        // Activations enter vpdpbusd as unsigned q + 128 and r + 128; each weight row's
        // -257 · 128 Σw cancels both offsets of 256 Σ (q + 128) w + Σ (r + 128) w. The q sums start
        // from a zeroed register and the r sums accumulate onto the shifted q sums, so no register
        // needs copying.
        let k128 = _mm512_set1_epi8(-128);
        let zero = _mm512_setzero_si512();
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut b = 0;
        while b + 2 <= nb {
            let mut w = [zero; R];
            let mut neg = [zero; R];
            let mut sw = [_mm512_setzero_ps(); R];
            for r in 0..R {
                // Rows are short (1.5–3 KB) and read R at a time: ask for the blocks ahead early so
                // the stream does not wait on the hardware prefetcher at every row start.
                _mm_prefetch::<_MM_HINT_T0>(d.block_addr(rows[r], b + PREFETCH_BLOCKS));
                let (v, s) = d.zmm(rows[r], b, tbl);
                w[r] = v;
                sw[r] = s;
                let c = _mm512_dpbusd_epi32(_mm512_setzero_si512(), k128, v);
                neg[r] = _mm512_sub_epi32(zero, _mm512_add_epi32(_mm512_slli_epi32(c, 8), c));
            }
            for (c, x) in xs.iter().enumerate() {
                let q = _mm512_loadu_si512(x.codes.as_ptr().add(BLOCK * b).cast());
                let rem = _mm512_loadu_si512(x.rems.as_ptr().add(BLOCK * b).cast());
                let (qu, ru) = (_mm512_xor_si512(q, k128), _mm512_xor_si512(rem, k128));
                let sx = halves(*x.scales.get_unchecked(b), *x.scales.get_unchecked(b + 1));
                for r in 0..R {
                    let dq = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qu, w[r]);
                    let t = _mm512_add_epi32(_mm512_slli_epi32(dq, 8), neg[r]);
                    let dot = _mm512_dpbusd_epi32(t, ru, w[r]);
                    let s = _mm512_mul_ps(sw[r], sx);
                    acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc[r][c]);
                }
            }
            b += 2;
        }
        let mut out = [[0.0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                out[r][c] = _mm512_reduce_add_ps(acc[r][c]);
            }
        }
        if b < nb {
            // An odd last block: the 256-bit form of the same sums.
            let tbl = _mm512_castsi512_si256(tbl);
            let (k128, zero) = (_mm256_set1_epi8(-128), _mm256_setzero_si256());
            for r in 0..R {
                let (v, s) = d.ymm(rows[r], b, tbl);
                let neg = _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, k128, v));
                for (c, x) in xs.iter().enumerate() {
                    let q = _mm256_loadu_si256(x.codes.as_ptr().add(BLOCK * b).cast());
                    let rem = _mm256_loadu_si256(x.rems.as_ptr().add(BLOCK * b).cast());
                    let dq = _mm256_dpbusd_epi32(neg, _mm256_xor_si256(q, k128), v);
                    let dr = _mm256_dpbusd_epi32(neg, _mm256_xor_si256(rem, k128), v);
                    let dot = _mm256_add_epi32(_mm256_slli_epi32(dq, 8), dr);
                    let sum = hsum256(_mm256_cvtepi32_ps(dot));
                    out[r][c] += sum * (s * *x.scales.get_unchecked(b));
                }
            }
        }
        out
    }
}

/// The int8 block values and scales the SIMD decode gives for block `b` of row `j` (tests compare
/// them with the scalar decode exactly).
///
/// # Safety
/// The CPU must support AVX2 + F16C (and AVX-512 F/BW/VL for `level == Avx512Vnni`); `b + 1` must be a
/// block of the row for the 512-bit decode.
#[cfg(test)]
pub(crate) unsafe fn decoded(
    level: X86Level,
    w: &IntWeight<'_>,
    j: usize,
    b: usize,
) -> (Vec<i8>, Vec<f32>) {
    unsafe fn get<D: Decode>(level: X86Level, d: D, j: usize, b: usize) -> (Vec<i8>, Vec<f32>) {
        match level {
            X86Level::Avx2 => ymm_of(d, j, b),
            X86Level::Avx512Vnni => zmm_of(d, j, b),
        }
    }
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn ymm_of<D: Decode>(d: D, j: usize, b: usize) -> (Vec<i8>, Vec<f32>) {
        let tbl = _mm256_broadcastsi128_si256(_mm_loadu_si128(d.table().as_ptr().cast()));
        let (v, s) = d.ymm(d.row(j), b, tbl);
        let mut out = vec![0i8; 32];
        _mm256_storeu_si256(out.as_mut_ptr().cast(), v);
        (out, vec![s])
    }
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
    unsafe fn zmm_of<D: Decode>(d: D, j: usize, b: usize) -> (Vec<i8>, Vec<f32>) {
        let tbl = _mm512_broadcast_i32x4(_mm_loadu_si128(d.table().as_ptr().cast()));
        let (v, s) = d.zmm(d.row(j), b, tbl);
        let mut out = vec![0i8; 64];
        _mm512_storeu_si512(out.as_mut_ptr().cast(), v);
        let mut sc = vec![0f32; 16];
        _mm512_storeu_ps(sc.as_mut_ptr(), s);
        (out, sc)
    }
    match *w {
        IntWeight::Ggml4 {
            blocks,
            table,
            scale,
        } => get(
            level,
            Ggml4 {
                blocks,
                table: table.values,
                unit: table.unit,
                scale,
            },
            j,
            b,
        ),
        IntWeight::Hf4 {
            codes,
            scales,
            table,
        } => get(
            level,
            Hf4 {
                codes,
                scales,
                table: table.values,
                unit: table.unit,
            },
            j,
            b,
        ),
        IntWeight::Q8_0 { blocks } => get(level, Q8 { blocks }, j, b),
    }
}
