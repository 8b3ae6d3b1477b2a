//! Activations for the fast kernels: each row in int8 blocks of 32, in the element order of the weight it
//! meets. A block is two int8 codes per element and one f32 unit: `x ≈ unit × (256 q + r)` with
//! `q = round(127 x / max |x|)` and `r` the rounded remainder in 1/256 steps, so the error is at most
//! `max |x| / 65024` (16-bit precision: plain int8 codes move the tiny fixtures' logits by up to 8% of
//! the largest, see bench/NOTES.md). The same value also lives as one int16 `256 q + r` per element, in the
//! order the int16 kernels (`vpdpwssd`) read it ([`pair_words`], and [`quad_words`] with its
//! per-lane corrections and units for the one-row quad tile). bf16 weights get their activations split
//! into two bf16 parts instead. The buffers are reused from call to call.

use rayon::prelude::*;

use super::weights::{ActLayout, BLOCK};

/// Rows at or above which quantization runs on every core.
const PARALLEL_ROWS: usize = 16;

/// One row's outputs (codes, remainders, units) and input, as the row iterators zip them.
type RowJob<'a> = (
    (
        (((&'a mut [i8], &'a mut [i8]), &'a mut [f32]), &'a mut [i32]),
        &'a mut [i16],
    ),
    &'a [f32],
);

/// One row's [`quad_words`] outputs and inputs (codes, remainders, units), as the row iterators zip them.
type QuadJob<'a> = (
    (
        (
            ((&'a mut [i16], &'a mut [i32]), &'a mut [f32]),
            &'a mut [i8],
        ),
        &'a mut [i8],
    ),
    ((&'a [i8], &'a [i8]), &'a [f32]),
);

/// Quantized activation rows `[rows, n]`, reused across calls.
#[derive(Default)]
pub(crate) struct QuantActs {
    /// The leading int8 codes `q`, `n` per row, each block in the weight's [`ActLayout`].
    pub codes: Vec<i8>,
    /// The remainders `r` in the same order.
    pub rems: Vec<i8>,
    /// One unit per block (`max |x| / (127 × 256)`), `n / 32` per row.
    pub scales: Vec<f32>,
    /// `-128 · Σ (256 q + r)` over each group of 4 codes, `n / 4` per row: what offsetting the weights
    /// by +128 (to enter `vpdpbusd` unsigned) adds to each lane of a dot product.
    pub offsets: Vec<i32>,
    /// `256 q + r` per element, `n` per row, each pair of blocks in [`pair_words`]' order (only the int16
    /// AVX2 tile reads them, and no production path picks it: written when asked, see [`QuantActs::quantize_for`]).
    pub words: Vec<i16>,
    /// Whether `words` hold the rows last quantized (views show none otherwise).
    pub has_words: bool,
    /// `256 q + r` of each whole quad of blocks in [`quad_words`]' order, `128 (n / 128)` per row.
    pub quad_words: Vec<i16>,
    /// `-128 Σ (256 q + r)` of each int32 lane of the quad tile, 16 per quad.
    pub quad_offsets: Vec<i32>,
    /// Each quad tile lane's unit (its block's), 16 per quad.
    pub quad_units: Vec<f32>,
    /// The codes `q` of each whole quad as the int8 quad tile reads them ([`QuadRow::codes`]).
    pub quad_codes: Vec<i8>,
    /// The remainders `r` likewise.
    pub quad_rems: Vec<i8>,
    /// Row length.
    pub n: usize,
    /// Rows held.
    pub rows: usize,
}

impl QuantActs {
    /// Quantizes `rows` rows of `x` (`n` each, `n % 32 == 0`) in `layout`, every form included (tests and
    /// benchmarks: the kernels' callers ask for what they read through [`QuantActs::quantize_for`]).
    #[cfg(test)]
    pub(crate) fn quantize(&mut self, x: &[f32], rows: usize, n: usize, layout: ActLayout) {
        self.quantize_for(x, rows, n, layout, true);
    }

    /// [`QuantActs::quantize`], the pair words only when `with_words` is set: a third of a row's quantization
    /// (≈ 2.5 µs of 6.5 for 2,880 elements on this project's Zen 4) that only the int16 AVX2 tile reads.
    pub(crate) fn quantize_for(
        &mut self,
        x: &[f32],
        rows: usize,
        n: usize,
        layout: ActLayout,
        with_words: bool,
    ) {
        let nb = n / BLOCK;
        self.codes.resize(rows * n, 0);
        self.rems.resize(rows * n, 0);
        self.scales.resize(rows * nb, 0.0);
        self.offsets.resize(rows * n / 4, 0);
        self.words.resize(rows * n, 0);
        (self.n, self.rows) = (n, rows);
        self.has_words = with_words;
        let work = |(((((codes, rems), scales), offsets), pairs), row): RowJob<'_>| {
            let out = QuantRow {
                codes: &mut *codes,
                rems: &mut *rems,
                scales,
                offsets,
            };
            quantize_row(row, layout, out);
            if with_words {
                pair_words(codes, rems, pairs);
            }
        };
        let (codes, rems, scales, offsets, words, x) = (
            &mut self.codes[..rows * n],
            &mut self.rems[..rows * n],
            &mut self.scales[..rows * nb],
            &mut self.offsets[..rows * n / 4],
            &mut self.words[..rows * n],
            &x[..rows * n],
        );
        if rows >= PARALLEL_ROWS {
            codes
                .par_chunks_mut(n)
                .zip(rems.par_chunks_mut(n))
                .zip(scales.par_chunks_mut(nb))
                .zip(offsets.par_chunks_mut(n / 4))
                .zip(words.par_chunks_mut(n))
                .zip(x.par_chunks(n))
                .for_each(work);
        } else {
            codes
                .chunks_mut(n)
                .zip(rems.chunks_mut(n))
                .zip(scales.chunks_mut(nb))
                .zip(offsets.chunks_mut(n / 4))
                .zip(words.chunks_mut(n))
                .zip(x.chunks(n))
                .for_each(work);
        }
        self.fill_quads();
    }

    /// [`quad_words`] of every row quantized (nothing for rows shorter than a quad).
    fn fill_quads(&mut self) {
        let (n, rows, nq) = (self.n, self.rows, self.n / QUAD_ELEMS);
        self.quad_words.resize(rows * nq * QUAD_ELEMS, 0);
        self.quad_offsets.resize(rows * nq * QUAD_LANES, 0);
        self.quad_units.resize(rows * nq * QUAD_LANES, 0.0);
        self.quad_codes.resize(rows * nq * QUAD_ELEMS, 0);
        self.quad_rems.resize(rows * nq * QUAD_ELEMS, 0);
        if nq == 0 {
            return;
        }
        let work =
            |(((((words, offsets), units), qc), qr), ((codes, rems), scales)): QuadJob<'_>| {
                let out = QuadRow {
                    words,
                    offsets,
                    units,
                    codes: qc,
                    rems: qr,
                };
                quad_words(codes, rems, scales, out);
            };
        let (words, offsets, units, qc, qr) = (
            &mut self.quad_words[..rows * nq * QUAD_ELEMS],
            &mut self.quad_offsets[..rows * nq * QUAD_LANES],
            &mut self.quad_units[..rows * nq * QUAD_LANES],
            &mut self.quad_codes[..rows * nq * QUAD_ELEMS],
            &mut self.quad_rems[..rows * nq * QUAD_ELEMS],
        );
        let (codes, rems, scales) = (
            &self.codes[..rows * n],
            &self.rems[..rows * n],
            &self.scales[..rows * n / BLOCK],
        );
        if rows >= PARALLEL_ROWS {
            words
                .par_chunks_mut(nq * QUAD_ELEMS)
                .zip(offsets.par_chunks_mut(nq * QUAD_LANES))
                .zip(units.par_chunks_mut(nq * QUAD_LANES))
                .zip(qc.par_chunks_mut(nq * QUAD_ELEMS))
                .zip(qr.par_chunks_mut(nq * QUAD_ELEMS))
                .zip(
                    codes
                        .par_chunks(n)
                        .zip(rems.par_chunks(n))
                        .zip(scales.par_chunks(n / BLOCK)),
                )
                .for_each(work);
        } else {
            words
                .chunks_mut(nq * QUAD_ELEMS)
                .zip(offsets.chunks_mut(nq * QUAD_LANES))
                .zip(units.chunks_mut(nq * QUAD_LANES))
                .zip(qc.chunks_mut(nq * QUAD_ELEMS))
                .zip(qr.chunks_mut(nq * QUAD_ELEMS))
                .zip(
                    codes
                        .chunks(n)
                        .zip(rems.chunks(n))
                        .zip(scales.chunks(n / BLOCK)),
                )
                .for_each(work);
        }
    }

    /// Rows `rows` of what was quantized.
    pub(crate) fn view(&self, rows: std::ops::Range<usize>) -> QuantView<'_> {
        let (n, nb, nq) = (self.n, self.n / BLOCK, self.n / QUAD_ELEMS);
        QuantView {
            codes: &self.codes[rows.start * n..rows.end * n],
            rems: &self.rems[rows.start * n..rows.end * n],
            scales: &self.scales[rows.start * nb..rows.end * nb],
            offsets: &self.offsets[rows.start * n / 4..rows.end * n / 4],
            words: if self.has_words {
                &self.words[rows.start * n..rows.end * n]
            } else {
                &[]
            },
            quad_words: &self.quad_words[rows.start * nq * QUAD_ELEMS..rows.end * nq * QUAD_ELEMS],
            quad_offsets: &self.quad_offsets
                [rows.start * nq * QUAD_LANES..rows.end * nq * QUAD_LANES],
            quad_units: &self.quad_units[rows.start * nq * QUAD_LANES..rows.end * nq * QUAD_LANES],
            quad_codes: &self.quad_codes[rows.start * nq * QUAD_ELEMS..rows.end * nq * QUAD_ELEMS],
            quad_rems: &self.quad_rems[rows.start * nq * QUAD_ELEMS..rows.end * nq * QUAD_ELEMS],
            n,
            rows: rows.len(),
        }
    }
}

/// Element `k` (0..16) of a block's half `A` in the int16 kernel's order: positions `4m, 4m + 1` of each
/// group `m` of four, low half (positions 0..16) then high half. Half `B` is the same plus 2. A 512-bit
/// `vpunpcklbw` / `vpunpckhbw` of weights decoded in this order ([`PAIR_BYTE_ORDER`]) meets these words
/// so that each int32 lane of `vpdpwssd` sums the very group of four its `vpdpbusd` lane summed.
pub(crate) const fn pair_position(k: usize) -> usize {
    16 * (k / 8) + 4 * (k % 8 / 2) + k % 2
}

/// Within each 128-bit lane of a decoded weight register, which byte of the plain decode the int16
/// kernel wants at byte `j`: the `A` positions of that lane's 16 (bytes 0..8), then the `B` positions.
pub(crate) const PAIR_BYTE_ORDER: [u8; 16] = [0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15];

/// One row's `256 q + r` in the int16 kernel's order: per pair of blocks `(b, b + 1)`, 64 words `A(b)`,
/// `A(b + 1)`, `B(b)`, `B(b + 1)` (see [`pair_position`]); a last unpaired block as `A(b)`, `B(b)`.
pub(crate) fn pair_words(codes: &[i8], rems: &[i8], out: &mut [i16]) {
    let word = |p: usize| 256 * i16::from(codes[p]) + i16::from(rems[p]);
    let nb = codes.len() / BLOCK;
    for b in 0..nb {
        let (a, bh) = block_words(b, nb);
        for k in 0..16 {
            let p = b * BLOCK + pair_position(k);
            out[a + k] = word(p);
            out[bh + k] = word(p + 2);
        }
    }
}

/// Where block `b` (of `nb` in the row) has its halves `A` and `B` in [`pair_words`]' order: a paired
/// block's halves sit 32 words apart (the other block's between them), a last unpaired block's 16.
#[inline(always)]
pub(crate) fn block_words(b: usize, nb: usize) -> (usize, usize) {
    let (pair, second) = (b / 2, b % 2);
    if pair * 2 + 1 < nb {
        let a = 64 * pair + 16 * second;
        (a, a + 32)
    } else {
        (64 * pair, 64 * pair + 16)
    }
}

/// Elements of a quad: four blocks, the unit of the one-row quad tile.
pub(crate) const QUAD_ELEMS: usize = 4 * BLOCK;

/// int32 lanes of a quad tile's dot: four per block.
pub(crate) const QUAD_LANES: usize = 16;

/// The block position held by word `t` (0..8) of each 128-bit lane in register `j` of a quad (each
/// 128-bit lane is one block): positions `4i, 4i + 1` (`i = t / 2`) in register 0, `4i + 2, 4i + 3` in
/// register 2, and 16 more in registers 1 and 3. The quad tile's int32 lane `4 L + m` sums words `2m`,
/// `2m + 1` of all four registers, so it holds positions `4m..4m + 4` and `16 + 4m..16 + 4m + 4` of block
/// `L`: the same eight products as the int8 quad's lane (`vpdpbusd` on [`QuadRow::codes`]), so the two
/// share the corrections. For ggml 4-bit blocks, registers 0 and 2 are low nibbles and 1 and 3 high ones.
pub(crate) const fn quad_position(j: usize, t: usize) -> usize {
    16 * (j % 2) + 2 * (j / 2) + 4 * (t / 2) + t % 2
}

/// One row's int16 activations for the quad tile, written.
pub(crate) struct QuadRow<'a> {
    /// Per quad of blocks `4k..4k + 4`, four registers of 32 words: word `32 j + 8 L + t` is `256 q + r`
    /// of position [`quad_position`]`(j, t)` of block `4k + L`.
    pub words: &'a mut [i16],
    /// Per quad, 16 int32 lanes: `-128 ×` the sum of the 8 words lane `4 L + m` meets (what offsetting
    /// the weights by +128 adds to it).
    pub offsets: &'a mut [i32],
    /// Per quad, 16 lanes: the unit of lane `4 L + m`'s block.
    pub units: &'a mut [f32],
    /// Per quad, two registers of 64 codes `q`: byte `64 h + 16 L + t` is position `16 h + t` of block
    /// `4k + L`, so `vpdpbusd` lane `4 L + m` meets positions `4m..4m + 4` and `16 + 4m..16 + 4m + 4`.
    pub codes: &'a mut [i8],
    /// The remainders `r` likewise.
    pub rems: &'a mut [i8],
}

/// One row's whole quads of blocks in the quad tile's order (codes and remainders in layout order, one
/// unit per block); blocks past the last whole quad are left to the pair kernels.
pub(crate) fn quad_words(codes: &[i8], rems: &[i8], scales: &[f32], out: QuadRow<'_>) {
    let word = |p: usize| 256 * i16::from(codes[p]) + i16::from(rems[p]);
    for (k, ((words, offsets), units)) in out
        .words
        .chunks_exact_mut(QUAD_ELEMS)
        .zip(out.offsets.chunks_exact_mut(QUAD_LANES))
        .zip(out.units.chunks_exact_mut(QUAD_LANES))
        .enumerate()
    {
        for lane in 0..4 {
            let blk = (4 * k + lane) * BLOCK;
            for h in 0..2 {
                let (at, from) = (QUAD_ELEMS * k + 64 * h + 16 * lane, blk + 16 * h);
                out.codes[at..at + 16].copy_from_slice(&codes[from..from + 16]);
                out.rems[at..at + 16].copy_from_slice(&rems[from..from + 16]);
            }
            for j in 0..4 {
                for t in 0..8 {
                    words[32 * j + 8 * lane + t] = word(blk + quad_position(j, t));
                }
            }
            for m in 0..4 {
                // The lane's eight words, as just written (plain indexing: this runs for every row
                // of a prefill too).
                let mut sum = 0i32;
                for j in 0..4 {
                    let at = 32 * j + 8 * lane + 2 * m;
                    sum += i32::from(words[at]) + i32::from(words[at + 1]);
                }
                offsets[4 * lane + m] = -128 * sum;
                units[4 * lane + m] = scales[4 * k + lane];
            }
        }
    }
}

/// Some consecutive quantized rows.
#[derive(Clone, Copy)]
pub(crate) struct QuantView<'a> {
    codes: &'a [i8],
    rems: &'a [i8],
    scales: &'a [f32],
    offsets: &'a [i32],
    words: &'a [i16],
    quad_words: &'a [i16],
    quad_offsets: &'a [i32],
    quad_units: &'a [f32],
    quad_codes: &'a [i8],
    quad_rems: &'a [i8],
    /// Row length.
    pub n: usize,
    /// Rows.
    pub rows: usize,
}

impl<'a> QuantView<'a> {
    /// Whether the view holds every row's pair words (see [`QuantActs::quantize_for`]).
    pub(crate) fn has_words(&self) -> bool {
        self.words.len() == self.rows * self.n
    }

    /// Row `t`'s codes, remainders and units.
    #[inline(always)]
    pub(crate) fn row(&self, t: usize) -> QuantRef<'a> {
        let (nb, nq) = (self.n / BLOCK, self.n / QUAD_ELEMS);
        let (qw, ql) = (nq * QUAD_ELEMS, nq * QUAD_LANES);
        QuantRef {
            codes: &self.codes[t * self.n..(t + 1) * self.n],
            rems: &self.rems[t * self.n..(t + 1) * self.n],
            scales: &self.scales[t * nb..(t + 1) * nb],
            offsets: &self.offsets[t * self.n / 4..(t + 1) * self.n / 4],
            words: self.words.get(t * self.n..(t + 1) * self.n).unwrap_or(&[]),
            quad_words: &self.quad_words[t * qw..(t + 1) * qw],
            quad_offsets: &self.quad_offsets[t * ql..(t + 1) * ql],
            quad_units: &self.quad_units[t * ql..(t + 1) * ql],
            quad_codes: &self.quad_codes[t * qw..(t + 1) * qw],
            quad_rems: &self.quad_rems[t * qw..(t + 1) * qw],
        }
    }
}

/// One quantized row, read.
#[derive(Clone, Copy)]
pub(crate) struct QuantRef<'a> {
    /// Leading codes.
    pub codes: &'a [i8],
    /// Remainders.
    pub rems: &'a [i8],
    /// Units.
    pub scales: &'a [f32],
    /// Offset corrections, one per 4 codes.
    pub offsets: &'a [i32],
    /// `256 q + r` in [`pair_words`]' order.
    pub words: &'a [i16],
    /// `256 q + r` of the whole quads in [`quad_words`]' order.
    pub quad_words: &'a [i16],
    /// The quads' lane corrections ([`QuadRow::offsets`]).
    pub quad_offsets: &'a [i32],
    /// The quads' lane units ([`QuadRow::units`]).
    pub quad_units: &'a [f32],
    /// The quads' codes for the int8 quad tile ([`QuadRow::codes`]).
    pub quad_codes: &'a [i8],
    /// The quads' remainders likewise.
    pub quad_rems: &'a [i8],
}

/// One quantized row, written.
pub(crate) struct QuantRow<'a> {
    /// Leading codes.
    pub codes: &'a mut [i8],
    /// Remainders.
    pub rems: &'a mut [i8],
    /// Units.
    pub scales: &'a mut [f32],
    /// Offset corrections, one per 4 codes.
    pub offsets: &'a mut [i32],
}

/// Quantizes one row (`n % 32 == 0`) into `out` (layout order).
pub(crate) fn quantize_row(x: &[f32], layout: ActLayout, out: QuantRow<'_>) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was just detected.
        return unsafe { quantize_row_avx2(x, layout, out) };
    }
    quantize_row_body(x, layout, out)
}

/// [`quantize_row_body`] in AVX2 registers, bit for bit (the scalar form ran at ≈ 10 cycles an element, a
/// third of a one-row call on a 16-core host: bench/NOTES.md, session 18): the block maximum as an integer
/// maximum of |x|'s bits (NaN skipped, as `f32::max` skips it), the codes and remainders rounded to even and
/// saturated as Rust's `as i8` does (NaN to 0, ±inf to 127 / -128), then packed to bytes.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(x: &[f32], layout: ActLayout, out: QuantRow<'_>) {
    use std::arch::x86_64::*;
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    let mut permuted = [0f32; BLOCK];
    let (abs_bits, inf_bits) = (
        _mm256_set1_epi32(0x7fff_ffff),
        _mm256_set1_epi32(0x7f80_0000),
    );
    let (lo, hi, steps) = (
        _mm256_set1_ps(-128.0),
        _mm256_set1_ps(127.0),
        _mm256_set1_ps(256.0),
    );
    let (rem_lo, order) = (
        _mm256_set1_ps(-127.0),
        _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
    );
    for (((xb, cb), rb), unit) in x
        .chunks_exact(BLOCK)
        .zip(out.codes.chunks_exact_mut(BLOCK))
        .zip(out.rems.chunks_exact_mut(BLOCK))
        .zip(out.scales.iter_mut())
    {
        let xs = block_in_order(xb, layout, &mut permuted);
        // SAFETY (every load and store below): `xs`, `cb` and `rb` hold BLOCK = 32 elements.
        let v = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(xs.as_ptr().add(o)));
        let mut m = _mm256_setzero_si256();
        for vi in v {
            let a = _mm256_and_si256(_mm256_castps_si256(vi), abs_bits);
            let nan = _mm256_cmpgt_epi32(a, inf_bits);
            m = _mm256_max_epu32(m, _mm256_andnot_si256(nan, a));
        }
        let m = _mm_max_epu32(_mm256_castsi256_si128(m), _mm256_extracti128_si256::<1>(m));
        let m = _mm_max_epu32(m, _mm_shuffle_epi32::<0b01_00_11_10>(m));
        let m = _mm_max_epu32(m, _mm_shuffle_epi32::<0b10_11_00_01>(m));
        let amax = f32::from_bits(_mm_cvtsi128_si32(m) as u32);
        *unit = amax / (127.0 * 256.0);
        let inv = _mm256_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
        let (mut codes, mut rems) = ([_mm256_setzero_si256(); 4], [_mm256_setzero_si256(); 4]);
        for (j, vi) in v.into_iter().enumerate() {
            let s = _mm256_mul_ps(vi, inv);
            let q = _mm256_round_ps::<NEAREST>(s);
            let t = _mm256_round_ps::<NEAREST>(_mm256_mul_ps(_mm256_sub_ps(s, q), steps));
            let (q_ok, t_ok) = (
                _mm256_castps_si256(_mm256_cmp_ps::<_CMP_ORD_Q>(q, q)),
                _mm256_castps_si256(_mm256_cmp_ps::<_CMP_ORD_Q>(t, t)),
            );
            let q = _mm256_min_ps(_mm256_max_ps(q, lo), hi);
            let t = _mm256_min_ps(_mm256_max_ps(t, rem_lo), hi);
            codes[j] = _mm256_and_si256(_mm256_cvtps_epi32(q), q_ok);
            rems[j] = _mm256_and_si256(_mm256_cvtps_epi32(t), t_ok);
        }
        // packs interleave 4-element groups of the four vectors; `order` puts them back in sequence.
        let bytes = |c: [__m256i; 4]| {
            let b = _mm256_packs_epi16(
                _mm256_packs_epi32(c[0], c[1]),
                _mm256_packs_epi32(c[2], c[3]),
            );
            _mm256_permutevar8x32_epi32(b, order)
        };
        _mm256_storeu_si256(cb.as_mut_ptr().cast(), bytes(codes));
        _mm256_storeu_si256(rb.as_mut_ptr().cast(), bytes(rems));
    }
    offsets_of(out.codes, out.rems, out.offsets);
}

/// Block `xb` in `layout`'s element order: itself, or its elements copied into `permuted` in that order.
#[inline(always)]
fn block_in_order<'a>(
    xb: &'a [f32],
    layout: ActLayout,
    permuted: &'a mut [f32; BLOCK],
) -> &'a [f32] {
    match layout {
        ActLayout::Natural => xb,
        ActLayout::EvensOdds => {
            for (k, p) in permuted.iter_mut().enumerate() {
                *p = xb[layout.element(k)];
            }
            permuted
        }
    }
}

#[inline(always)]
fn quantize_row_body(x: &[f32], layout: ActLayout, out: QuantRow<'_>) {
    let mut permuted = [0f32; BLOCK];
    for (((xb, cb), rb), unit) in x
        .chunks_exact(BLOCK)
        .zip(out.codes.chunks_exact_mut(BLOCK))
        .zip(out.rems.chunks_exact_mut(BLOCK))
        .zip(out.scales.iter_mut())
    {
        let xs = block_in_order(xb, layout, &mut permuted);
        let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        *unit = amax / (127.0 * 256.0);
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        for ((c, r), &xv) in cb.iter_mut().zip(rb.iter_mut()).zip(xs) {
            let v = xv * inv;
            let q = v.round_ties_even();
            *c = q as i8;
            *r = ((v - q) * 256.0).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
    }
    offsets_of(out.codes, out.rems, out.offsets);
}

/// `offsets[i] = -128 · Σ (256 q + r)` over codes and remainders `4i..4i + 4`.
#[inline(always)]
fn offsets_of(codes: &[i8], rems: &[i8], offsets: &mut [i32]) {
    for ((o, c), r) in offsets
        .iter_mut()
        .zip(codes.chunks_exact(4))
        .zip(rems.chunks_exact(4))
    {
        let sum: i32 = c
            .iter()
            .zip(r)
            .map(|(&q, &r)| 256 * i32::from(q) + i32::from(r))
            .sum();
        *o = -128 * sum;
    }
}

/// Activation rows as two bf16 parts each (`x ≈ hi + lo`, 16 significant bits), reused across calls.
#[derive(Default)]
pub(crate) struct Bf16Acts {
    /// `[rows, n]` bf16 bits of `hi = bf16(x)`.
    pub hi: Vec<u16>,
    /// `[rows, n]` bf16 bits of `lo = bf16(x - hi)`.
    pub lo: Vec<u16>,
    /// Row length.
    pub n: usize,
}

impl Bf16Acts {
    /// Splits `rows` rows of `x` (`n` each), rounding to nearest even.
    pub(crate) fn split(&mut self, x: &[f32], rows: usize, n: usize) {
        self.hi.resize(rows * n, 0);
        self.lo.resize(rows * n, 0);
        self.n = n;
        for ((h, l), &v) in self
            .hi
            .iter_mut()
            .zip(self.lo.iter_mut())
            .zip(&x[..rows * n])
        {
            let hi = half::bf16::from_f32(v);
            *h = hi.to_bits();
            *l = half::bf16::from_f32(v - hi.to_f32()).to_bits();
        }
    }

    /// Row `t`: `(hi, lo)`.
    #[inline(always)]
    pub(crate) fn row(&self, t: usize) -> (&[u16], &[u16]) {
        let r = t * self.n..(t + 1) * self.n;
        (&self.hi[r.clone()], &self.lo[r])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 quantization is the scalar one bit for bit: ordinary blocks, ties at half a step, blocks of
    /// zeros, subnormals (whose 127 / max is infinite), infinities and NaN, in both element orders.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_quantization_matches_the_scalar_body() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let n = 32 * 12;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for case in 0..200 {
            let mut x: Vec<f32> = (0..n)
                .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let scale = f32::powi(2.0, case % 40 - 20);
            x.iter_mut().for_each(|v| *v *= scale);
            x[32..64].iter_mut().for_each(|v| *v = 0.0);
            x[64] = f32::NAN;
            x[96] = f32::INFINITY;
            x[100] = f32::NEG_INFINITY;
            x[128..160]
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = (i as f32 - 16.0) * 0.5);
            x[160..192]
                .iter_mut()
                .for_each(|v| *v = f32::from_bits(1 + (next() % 100) as u32));
            x[192] = -f32::from_bits(7);
            x[224..256].iter_mut().for_each(|v| *v = -*v * 1e30);
            for layout in [ActLayout::Natural, ActLayout::EvensOdds] {
                let run = |avx2: bool| {
                    let (mut c, mut r, mut s, mut o) = (
                        vec![0i8; n],
                        vec![0i8; n],
                        vec![0f32; n / 32],
                        vec![0i32; n / 4],
                    );
                    let out = QuantRow {
                        codes: &mut c,
                        rems: &mut r,
                        scales: &mut s,
                        offsets: &mut o,
                    };
                    if avx2 {
                        // SAFETY: AVX2 was detected above.
                        unsafe { quantize_row_avx2(&x, layout, out) }
                    } else {
                        quantize_row_body(&x, layout, out)
                    }
                    (c, r, s.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), o)
                };
                assert_eq!(run(true), run(false), "case {case}, {layout:?}");
            }
        }
    }

    #[test]
    fn quantized_blocks_round_trip_to_16_bits() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37) % 23) as f32 - 11.3).collect();
        let mut q = QuantActs::default();
        for layout in [ActLayout::Natural, ActLayout::EvensOdds] {
            q.quantize(&x, 1, 64, layout);
            let r = q.view(0..1).row(0);
            for b in 0..2 {
                let amax = x[b * 32..(b + 1) * 32]
                    .iter()
                    .fold(0f32, |m, v| m.max(v.abs()));
                assert_eq!(r.scales[b], amax / 127.0 / 256.0);
                for k in 0..32 {
                    let e = b * 32 + layout.element(k);
                    let i = b * 32 + k;
                    let back = (256.0 * r.codes[i] as f32 + r.rems[i] as f32) * r.scales[b];
                    assert!((back - x[e]).abs() <= amax / 65024.0 * 1.01, "{layout:?}");
                }
                assert!(r.codes[b * 32..(b + 1) * 32]
                    .iter()
                    .any(|&c| c.unsigned_abs() == 127));
            }
        }
        // One int16 per element, `256 q + r`, a pair of blocks as A(0) A(1) B(0) B(1) and the odd
        // last block as A(2) B(2).
        let x: Vec<f32> = (0..96).map(|i| ((i * 53) % 31) as f32 - 15.2).collect();
        q.quantize(&x, 1, 96, ActLayout::Natural);
        let r = q.view(0..1).row(0);
        let word = |p: usize| 256 * i16::from(r.codes[p]) + i16::from(r.rems[p]);
        for k in 0..16 {
            let p = pair_position(k);
            for (b, base) in [(0, 0), (1, 16), (2, 64)] {
                let gap = if b < 2 { 32 } else { 16 };
                assert_eq!(r.words[base + k], word(32 * b + p), "A({b}) {k}");
                assert_eq!(r.words[base + gap + k], word(32 * b + p + 2), "B({b}) {k}");
            }
        }
        // Each position once per block.
        let mut seen: Vec<usize> = (0..16)
            .flat_map(|k| [pair_position(k), pair_position(k) + 2])
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..32).collect::<Vec<_>>());
        // An all-zero block quantizes to zeros with a zero unit.
        q.quantize(&[0.0; 32], 1, 32, ActLayout::Natural);
        let r = q.view(0..1).row(0);
        assert_eq!(
            (r.codes, r.rems, r.scales),
            (&[0i8; 32][..], &[0i8; 32][..], &[0.0][..])
        );
    }
}
