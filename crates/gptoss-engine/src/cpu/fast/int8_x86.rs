//! The x86 int8 kernels: a tile of up to 3 weight rows × 4 activation rows, each weight block decoded to
//! int8 once (a nibble byte shuffle for 4-bit tables, a load for Q8_0) and dotted with every activation
//! row's codes and remainders; the exact int32 `256 Σ w q + Σ w r` per lane (≤ 2^24, so its f32 is
//! exact) is scaled by the weight's scale × the activation's unit into f32 lanes. AVX-512 VNNI
//! (`vpdpbusd`, two blocks per 512-bit op, activations offset to unsigned with the offset cancelled in
//! the accumulator's initial value) where present, else AVX2 (`vpmaddubsw` on |w| and sign(x, w), as
//! llama.cpp does). On AVX-512 VBMI, MXFP4 and Q8_0 take the quad tile of `quad_x86.rs` (four blocks a
//! step, one per 128-bit lane) at any number of activation rows; on AVX2, MXFP4 takes the pair tile (two
//! blocks a step, one per 128-bit lane). All give exactly the integer block dots of the scalar path
//! (`portable.rs`).

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::acts::{block_words, QuantRef, QuantView, PAIR_BYTE_ORDER, QUAD_ELEMS, QUAD_LANES};
use super::decode_x86::{e8m0, halves, prefetch_ahead, with_decoder, Decode, RowPtr, WithDecoder};
use super::quad_x86::{HfMxfp4Quad, Mxfp4Quad, Q8Quad, QuadTile, Quads};
use super::weights::{IntWeight, BLOCK};
use super::{OutRows, TILE_COLS};

/// Which instruction set a task runs with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum X86Level {
    /// AVX2 + FMA + F16C, one block a step. (Only the tests and the measurements pick it alone: it is
    /// what [`X86Level::Avx2Pair`] and [`X86Level::Avx2Int16`] are checked and timed against.)
    #[cfg_attr(not(test), allow(dead_code))]
    Avx2,
    /// [`X86Level::Avx2`] with MXFP4 (ggml and HF) two blocks a step, one per 128-bit lane
    /// ([`Avx2PairTile`]): what AVX2 machines run.
    Avx2Pair,
    /// [`X86Level::Avx2`] with the int16 tile for one activation row ([`Avx2Int16Tile`]). Not the
    /// default: on this Zen 5 machine it measured within the noise of [`X86Level::Avx2`]
    /// (bench/NOTES.md); the tests and `int16_tile_throughput` keep it checked and measurable.
    #[cfg_attr(not(test), allow(dead_code))]
    Avx2Int16,
    /// AVX-512 F/BW/VL + VNNI (plus AVX2, FMA, F16C).
    Avx512Vnni,
    /// [`X86Level::Avx512Vnni`] plus VBMI: ggml MXFP4 and Q8_0 decoded four blocks per 512-bit load.
    /// (Only the tests and the measurements pick it alone: it is what the quad tile is timed against.)
    #[cfg_attr(not(test), allow(dead_code))]
    Avx512Vbmi,
    /// [`X86Level::Avx512Vbmi`] with the quad tile ([`QuadTile`]) for one activation row of ggml MXFP4
    /// and Q8_0.
    Avx512Quad,
}

impl X86Level {
    /// The best AVX-512 level this CPU has (the caller checked VNNI).
    pub(crate) fn avx512() -> Self {
        if is_x86_feature_detected!("avx512vbmi") {
            X86Level::Avx512Quad
        } else {
            X86Level::Avx512Vnni
        }
    }
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
    with_decoder(w, Sweep { level, job: &job })
}

/// A task with its instruction set, run on whichever decoder the weight has.
struct Sweep<'a, 'b> {
    level: X86Level,
    job: &'a Job<'b>,
}

impl WithDecoder for Sweep<'_, '_> {
    type Out = ();
    unsafe fn with<D: Decode>(self, d: D) {
        run(self.level, d, self.job)
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
        X86Level::Avx2Pair => run_avx2_pair(d, job),
        X86Level::Avx2Int16 => run_avx2_int16(d, job),
        X86Level::Avx512Vnni => run_vnni(d, job),
        X86Level::Avx512Vbmi => run_vbmi(d, job),
        X86Level::Avx512Quad => run_quad(d, job),
    }
}

// Tile shapes (weight rows × activation rows) that keep every accumulator in a register: AVX2 has 16
// vector registers (8 accumulators, 2 rows × (w, |w|), temporaries), AVX-512 32 (12 accumulators, 3
// rows × (w, offset, scale), temporaries); 4 × 4 spilled accumulators to the stack.

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_avx2<D: Decode>(d: D, job: &Job<'_>) {
    sweep::<D, Avx2Tile, 2>(&d, job);
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_avx2_pair<D: Decode>(d: D, job: &Job<'_>) {
    match d.quads() {
        // 2 weight rows a tile at any number of activation rows: at four, one weight row a tile fits
        // AVX2's 16 registers but measured 1.14-1.16x the per-block tile against 1.22-1.28x for two
        // (int16_tile_throughput, KL=avx2pair KT=4).
        Some(Quads::Mxfp4 { .. } | Quads::HfMxfp4 { .. }) => {
            sweep_quads::<D, Avx2PairTile, 2, 2>(&d, job)
        }
        _ => sweep::<D, Avx2Tile, 2>(&d, job),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_avx2_int16<D: Decode>(d: D, job: &Job<'_>) {
    // Its activations are the pair words, which a quantization writes only when asked.
    assert!(
        job.acts.has_words(),
        "the int16 AVX2 tile needs the pair words (QuantActs::quantize_for with words)"
    );
    sweep::<D, Avx2Int16Tile, 2>(&d, job);
}

#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn run_vnni<D: Decode>(d: D, job: &Job<'_>) {
    sweep::<D, VnniTile, 3>(&d, job);
}

#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn run_vbmi<D: Decode>(d: D, job: &Job<'_>) {
    sweep::<D, VbmiTile, 3>(&d, job);
}

#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn run_quad<D: Decode>(d: D, job: &Job<'_>) {
    // One activation row: 4 weight rows a tile, streaming from DRAM 1–3% faster than 3 for both
    // formats, 2 was 5–10% slower and 6 no better (stream_levels, session 12). More activation rows:
    // as many weight rows as keep the decoded quads, the accumulators and one activation row's
    // registers in the 32 (MXFP4 3 decoded registers a row, Q8_0 5).
    match d.quads() {
        Some(Quads::Mxfp4 { .. }) => sweep_quads::<D, QuadTile<Mxfp4Quad>, 4, 3>(&d, job),
        Some(Quads::HfMxfp4 { .. }) => sweep_quads::<D, QuadTile<HfMxfp4Quad>, 4, 3>(&d, job),
        Some(Quads::Q8_0) => sweep_quads::<D, QuadTile<Q8Quad>, 4, 2>(&d, job),
        None => sweep::<D, VbmiTile, 3>(&d, job),
    }
}

/// Walks the task's weight rows in groups of `R` for each group of [`TILE_COLS`] activation rows. (No
/// closures on this path: a closure does not inherit its function's target features, and the
/// intrinsics inside it would become calls.)
#[inline(always)]
unsafe fn sweep<D: Decode, T: Tile, const R: usize>(d: &D, job: &Job<'_>) {
    let mut c0 = 0;
    while c0 < job.acts.rows {
        weight_rows::<D, T, R>(d, job, c0);
        c0 += TILE_COLS;
    }
}

/// [`sweep`] for the quad and pair tiles: groups of `R1` weight rows for a lone activation row, of `RW`
/// for more.
#[inline(always)]
unsafe fn sweep_quads<D: Decode, T: Tile, const R1: usize, const RW: usize>(d: &D, job: &Job<'_>) {
    let mut c0 = 0;
    while c0 < job.acts.rows {
        if job.acts.rows - c0 == 1 {
            weight_rows::<D, T, R1>(d, job, c0);
        } else {
            weight_rows::<D, T, RW>(d, job, c0);
        }
        c0 += TILE_COLS;
    }
}

/// The task's weight rows in groups of `R` against activation rows `c0..` (up to [`TILE_COLS`]).
#[inline(always)]
unsafe fn weight_rows<D: Decode, T: Tile, const R: usize>(d: &D, job: &Job<'_>, c0: usize) {
    let mut r0 = job.rows.start;
    while r0 < job.rows.end {
        let r1 = (r0 + R).min(job.rows.end);
        tiles::<D, T, R>(d, job, r0..r1, c0);
        r0 = r1;
    }
}

/// A tile kernel over `R` weight rows × `C` activation rows.
pub(super) trait Tile {
    /// `rows` with every activation row of `xs`; `ahead` are the next tile's rows (to prefetch).
    unsafe fn run<D: Decode, const R: usize, const C: usize>(
        d: &D,
        rows_ahead: ([RowPtr; R], [RowPtr; R]),
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
    // The rows of the next tile, prefetched block by block while this one runs. Past the task's last
    // tile they are the next task's first rows (what the same thread most often runs next), up to the
    // weight's last row: streaming from DRAM 4–10% faster (MXFP4) and ~4% (Q8_0) than stopping at the
    // task's end, where the next tile started cold (stream_levels, session 12). Into L2: `prefetch_ahead`.
    let mut ahead = ptrs;
    for (r, p) in ahead.iter_mut().enumerate() {
        *p = d.row((rows.start + R + r).min(d.rows() - 1));
    }
    T::run::<D, R, C>(d, (ptrs, ahead), xs, job.acts.n / BLOCK)
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
        (rows, ahead): ([RowPtr; R], [RowPtr; R]),
        xs: [QuantRef<'_>; C],
        nb: usize,
    ) -> [[f32; C]; R] {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        avx2_blocks(d, (rows, ahead), &xs, (0, nb), &mut acc);
        lane_sums(&acc)
    }
}

/// Each accumulator's eight lanes summed.
#[inline(always)]
unsafe fn lane_sums<const R: usize, const C: usize>(acc: &[[__m256; C]; R]) -> [[f32; C]; R] {
    let mut out = [[0.0f32; C]; R];
    for r in 0..R {
        for c in 0..C {
            out[r][c] = hsum256(acc[r][c]);
        }
    }
    out
}

/// Blocks `b0..nb` of the [`Avx2Tile`], one block a step, into `acc`.
#[inline(always)]
unsafe fn avx2_blocks<D: Decode, const R: usize, const C: usize>(
    d: &D,
    (rows, ahead): ([RowPtr; R], [RowPtr; R]),
    xs: &[QuantRef<'_>; C],
    (b0, nb): (usize, usize),
    acc: &mut [[__m256; C]; R],
) {
    let tbl = _mm256_broadcastsi128_si256(_mm_loadu_si128(d.table().as_ptr().cast()));
    let (ones, k256) = (_mm256_set1_epi16(1), _mm256_set1_epi16(256));
    for b in b0..nb {
        let mut w = [_mm256_setzero_si256(); R];
        let mut aw = [_mm256_setzero_si256(); R];
        let mut sw = [0.0f32; R];
        for r in 0..R {
            if b % 2 == 0 {
                prefetch_ahead(d.block_addr(ahead[r], b));
            }
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
}

/// The [`Avx2Tile`] for MXFP4 (ggml or HF, tables within [`QUAD_TABLE_MAX`]): two blocks a step, each
/// 128-bit lane one block (codes `0..16` of both blocks in one register, `16..32` in another, as the quad
/// layouts of the activations already hold them), each weight row's pair decoded once for every
/// activation row of the tile, so the f32 work (convert, scale, FMA) runs once per two blocks and the two
/// blocks' scales need no broadcast per block. Each int32 lane sums eight products exactly (|w| ≤ 64
/// keeps the int16 pair sums and the lane below 2^24), the same eight the AVX-512 quad tile's lane sums.
/// Blocks past the last whole quad take the block-a-step loop.
struct Avx2PairTile;

impl Tile for Avx2PairTile {
    #[inline(always)]
    unsafe fn run<D: Decode, const R: usize, const C: usize>(
        d: &D,
        (rows, ahead): ([RowPtr; R], [RowPtr; R]),
        xs: [QuantRef<'_>; C],
        nb: usize,
    ) -> [[f32; C]; R] {
        let (unit, hf) = match d.quads() {
            Some(Quads::Mxfp4 { unit }) => (unit, false),
            Some(Quads::HfMxfp4 { unit }) => (unit, true),
            _ => return Avx2Tile::run::<D, R, C>(d, (rows, ahead), xs, nb),
        };
        let tbl = _mm256_broadcastsi128_si256(_mm_loadu_si128(d.table().as_ptr().cast()));
        let (ones, k256, m4) = (
            _mm256_set1_epi16(1),
            _mm256_set1_epi16(256),
            _mm256_set1_epi8(0x0F),
        );
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let pairs = 2 * (nb * BLOCK / QUAD_ELEMS);
        for p in 0..pairs {
            let b = 2 * p;
            // SAFETY: `PairRow` is vector registers only, for which zero bits are a value.
            let mut w: [PairRow; R] = std::mem::zeroed();
            for r in 0..R {
                prefetch_ahead(d.block_addr(ahead[r], b));
                w[r] = pair_row(d, rows[r], b, (tbl, m4), (unit, hf));
            }
            for c in 0..C {
                let x = PairX::of(&xs[c], p);
                for r in 0..R {
                    acc[r][c] = pair_dot(&w[r], &x, (ones, k256), acc[r][c]);
                }
            }
        }
        avx2_blocks(d, (rows, ahead), &xs, (2 * pairs, nb), &mut acc);
        lane_sums(&acc)
    }
}

/// One weight row's pair of MXFP4 blocks for [`Avx2PairTile`]: the values of positions `0..16` (`w[0]`) and
/// `16..32` (`w[1]`) of the two blocks (one per 128-bit lane), their magnitudes (`w[2]`, `w[3]`), and each
/// lane's scale times the table's unit.
#[derive(Clone, Copy)]
struct PairRow {
    w: [__m256i; 4],
    scale: __m256,
}

/// Blocks `b`, `b + 1` of row `r` as a [`PairRow`] (`hf`: the HF layout, codes apart from the scales).
#[inline(always)]
unsafe fn pair_row<D: Decode>(
    d: &D,
    r: RowPtr,
    b: usize,
    (tbl, m4): (__m256i, __m256i),
    (unit, hf): (f32, bool),
) -> PairRow {
    let (codes, e) = if hf {
        (
            _mm256_loadu_si256(r.data.add(16 * b).cast()),
            (*r.scales.add(b), *r.scales.add(b + 1)),
        )
    } else {
        let blk = d.block_addr(r, b).cast::<u8>();
        (
            _mm256_loadu2_m128i(blk.add(18).cast(), blk.add(1).cast()),
            (*blk, *blk.add(17)),
        )
    };
    let w0 = _mm256_shuffle_epi8(tbl, _mm256_and_si256(codes, m4));
    let w1 = _mm256_shuffle_epi8(tbl, _mm256_and_si256(_mm256_srli_epi16(codes, 4), m4));
    PairRow {
        w: [w0, w1, _mm256_abs_epi8(w0), _mm256_abs_epi8(w1)],
        scale: _mm256_set_m128(_mm_set1_ps(e8m0(e.1) * unit), _mm_set1_ps(e8m0(e.0) * unit)),
    }
}

/// One activation row's pair `p` of blocks as [`Avx2PairTile`] reads it: codes and remainders of
/// positions `0..16` and `16..32` (from the quad layouts) and each int32 lane's unit.
struct PairX {
    planes: [__m256i; 4],
    units: __m256,
}

impl PairX {
    #[inline(always)]
    unsafe fn of(x: &QuantRef<'_>, p: usize) -> Self {
        let at = QUAD_ELEMS * (p / 2) + 32 * (p % 2);
        let (c, r) = (x.quad_codes.as_ptr().add(at), x.quad_rems.as_ptr().add(at));
        PairX {
            planes: [
                _mm256_loadu_si256(c.cast()),
                _mm256_loadu_si256(c.add(64).cast()),
                _mm256_loadu_si256(r.cast()),
                _mm256_loadu_si256(r.add(64).cast()),
            ],
            units: _mm256_loadu_ps(
                x.quad_units
                    .as_ptr()
                    .add(QUAD_LANES * (p / 2) + 8 * (p % 2)),
            ),
        }
    }
}

/// `acc + Σ_lanes dot × w_scale × x_unit` for one decoded pair and one activation row.
#[inline(always)]
unsafe fn pair_dot(
    w: &PairRow,
    x: &PairX,
    (ones, k256): (__m256i, __m256i),
    acc: __m256,
) -> __m256 {
    let [w0, w1, a0, a1] = w.w;
    let [q0, q1, r0, r1] = x.planes;
    let pq = _mm256_add_epi16(
        _mm256_maddubs_epi16(a0, _mm256_sign_epi8(q0, w0)),
        _mm256_maddubs_epi16(a1, _mm256_sign_epi8(q1, w1)),
    );
    let pr = _mm256_add_epi16(
        _mm256_maddubs_epi16(a0, _mm256_sign_epi8(r0, w0)),
        _mm256_maddubs_epi16(a1, _mm256_sign_epi8(r1, w1)),
    );
    let p32 = _mm256_add_epi32(_mm256_madd_epi16(pq, k256), _mm256_madd_epi16(pr, ones));
    _mm256_fmadd_ps(
        _mm256_cvtepi32_ps(p32),
        _mm256_mul_ps(w.scale, x.units),
        acc,
    )
}

/// The [`Avx2Tile`] for one activation row in one int16 pass per block: the weights decoded unsigned
/// (+128), their bytes reordered within each 128-bit lane by [`PAIR_BYTE_ORDER`] (one `vpshufb`) and
/// unpacked with zeros into two registers of int16 lanes; two `vpmaddwd` with the activation's
/// `256 q + r` words plus the `-128 Σ (256 q + r)` correction give each int32 lane the sum the
/// [`Avx2Tile`] lane had (the same four products, exactly), and the f32 work is the same. Per block and
/// weight row that is a shuffle and two unpacks (and no `vpabsb`) in the decode, and 2 `vpmaddwd` + 2
/// adds in place of 2 `vpsignb` + 2 `vpmaddubsw` + 2 `vpmaddwd` + an add. More rows take [`Avx2Tile`].
struct Avx2Int16Tile;

impl Tile for Avx2Int16Tile {
    #[inline(always)]
    unsafe fn run<D: Decode, const R: usize, const C: usize>(
        d: &D,
        (rows, ahead): ([RowPtr; R], [RowPtr; R]),
        xs: [QuantRef<'_>; C],
        nb: usize,
    ) -> [[f32; C]; R] {
        if C != 1 {
            return Avx2Tile::run::<D, R, C>(d, (rows, ahead), xs, nb);
        }
        let tbl_u = _mm256_add_epi8(
            _mm256_broadcastsi128_si256(_mm_loadu_si128(d.table().as_ptr().cast())),
            _mm256_set1_epi8(-128),
        );
        let order = _mm256_broadcastsi128_si256(_mm_loadu_si128(PAIR_BYTE_ORDER.as_ptr().cast()));
        let zero = _mm256_setzero_si256();
        let x = xs[0];
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        for b in 0..nb {
            let mut wa = [zero; R];
            let mut wb = [zero; R];
            let mut sw = [0.0f32; R];
            for r in 0..R {
                if b % 2 == 0 {
                    prefetch_ahead(d.block_addr(ahead[r], b));
                }
                let (v, s) = d.ymm_u(rows[r], b, tbl_u);
                let v = _mm256_shuffle_epi8(v, order);
                (wa[r], wb[r], sw[r]) = (
                    _mm256_unpacklo_epi8(v, zero),
                    _mm256_unpackhi_epi8(v, zero),
                    s,
                );
            }
            let (a_at, b_at) = block_words(b, nb);
            let xa = _mm256_loadu_si256(x.words.as_ptr().add(a_at).cast());
            let xb = _mm256_loadu_si256(x.words.as_ptr().add(b_at).cast());
            let off = _mm256_loadu_si256(x.offsets.as_ptr().add(8 * b).cast());
            let dx = *x.scales.get_unchecked(b);
            for r in 0..R {
                let p32 = _mm256_add_epi32(
                    _mm256_add_epi32(off, _mm256_madd_epi16(wa[r], xa)),
                    _mm256_madd_epi16(wb[r], xb),
                );
                let s = _mm256_set1_ps(sw[r] * dx);
                acc[r][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), s, acc[r][0]);
            }
        }
        let mut out = [[0.0f32; C]; R];
        for r in 0..R {
            out[r][0] = hsum256(acc[r][0]);
        }
        out
    }
}

struct VnniTile;

/// The unsigned-weight table of the VNNI kernels: the 16 values + 128 in every 128-bit lane.
#[inline(always)]
pub(super) unsafe fn table_u<D: Decode>(d: &D) -> __m512i {
    _mm512_add_epi8(
        _mm512_broadcast_i32x4(_mm_loadu_si128(d.table().as_ptr().cast())),
        _mm512_set1_epi8(-128),
    )
}

/// Blocks `b`, `b + 1` of `R` decoded weight rows (`w`, `sw`) against every activation row, into `acc`.
///
/// Weights enter vpdpbusd unsigned (w + 128: the table shifted, or Q8_0 bytes with the top bit
/// flipped); the activation row carries -128 Σ (256 q + r) per 4 codes, which cancels the shift in
/// 256 Σ (w + 128) q + Σ (w + 128) r. The q sums start from a zeroed register and the r sums accumulate
/// onto the shifted q sums plus that correction: no register copies, and no per-row correction.
#[inline(always)]
unsafe fn pair_dots<const R: usize, const C: usize>(
    (w, sw): (&[__m512i; R], &[__m512; R]),
    xs: &[QuantRef<'_>; C],
    b: usize,
    acc: &mut [[__m512; C]; R],
) {
    for (c, x) in xs.iter().enumerate() {
        let q = _mm512_loadu_si512(x.codes.as_ptr().add(BLOCK * b).cast());
        let rem = _mm512_loadu_si512(x.rems.as_ptr().add(BLOCK * b).cast());
        let off = _mm512_loadu_si512(x.offsets.as_ptr().add(8 * b).cast());
        let sx = halves(*x.scales.get_unchecked(b), *x.scales.get_unchecked(b + 1));
        for r in 0..R {
            let dq = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[r], q);
            let t = _mm512_add_epi32(_mm512_slli_epi32(dq, 8), off);
            let dot = _mm512_dpbusd_epi32(t, w[r], rem);
            let s = _mm512_mul_ps(sw[r], sx);
            acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc[r][c]);
        }
    }
}

/// The last pairs (from block `b`) and an odd last block of a VNNI tile, then the lane sums.
#[inline(always)]
pub(super) unsafe fn vnni_finish<D: Decode, const R: usize, const C: usize>(
    d: &D,
    (rows, ahead): ([RowPtr; R], [RowPtr; R]),
    xs: [QuantRef<'_>; C],
    (mut b, nb): (usize, usize),
    mut acc: [[__m512; C]; R],
) -> [[f32; C]; R] {
    let tbl_u = table_u(d);
    while b + 2 <= nb {
        let mut w = [_mm512_setzero_si512(); R];
        let mut sw = [_mm512_setzero_ps(); R];
        for r in 0..R {
            // Rows are short (1.5–3 KB) and read R at a time: fetch the next tile's rows while
            // this one runs, so no row starts cold.
            prefetch_ahead(d.block_addr(ahead[r], b));
            (w[r], sw[r]) = d.zmm_u(rows[r], b, tbl_u);
        }
        pair_dots((&w, &sw), &xs, b, &mut acc);
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
        let tbl_u = _mm512_castsi512_si256(tbl_u);
        for r in 0..R {
            let (v, s) = d.ymm_u(rows[r], b, tbl_u);
            for (c, x) in xs.iter().enumerate() {
                let q = _mm256_loadu_si256(x.codes.as_ptr().add(BLOCK * b).cast());
                let rem = _mm256_loadu_si256(x.rems.as_ptr().add(BLOCK * b).cast());
                let off = _mm256_loadu_si256(x.offsets.as_ptr().add(8 * b).cast());
                let dq = _mm256_dpbusd_epi32(_mm256_setzero_si256(), v, q);
                let t = _mm256_add_epi32(_mm256_slli_epi32(dq, 8), off);
                let dot = _mm256_dpbusd_epi32(t, v, rem);
                let sum = hsum256(_mm256_cvtepi32_ps(dot));
                out[r][c] += sum * (s * *x.scales.get_unchecked(b));
            }
        }
    }
    out
}

impl Tile for VnniTile {
    #[inline(always)]
    unsafe fn run<D: Decode, const R: usize, const C: usize>(
        d: &D,
        rows_ahead: ([RowPtr; R], [RowPtr; R]),
        xs: [QuantRef<'_>; C],
        nb: usize,
    ) -> [[f32; C]; R] {
        let acc = [[_mm512_setzero_ps(); C]; R];
        vnni_finish(d, rows_ahead, xs, (0, nb), acc)
    }
}

/// The VNNI tile with weights decoded four blocks at a time ([`Decode::zmm4_u`]); the same sums in the
/// same order as [`VnniTile`], so the same results bit for bit.
pub(super) struct VbmiTile;

impl Tile for VbmiTile {
    #[inline(always)]
    unsafe fn run<D: Decode, const R: usize, const C: usize>(
        d: &D,
        (rows, ahead): ([RowPtr; R], [RowPtr; R]),
        xs: [QuantRef<'_>; C],
        nb: usize,
    ) -> [[f32; C]; R] {
        let tbl_u = table_u(d);
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut b = 0;
        while b + 4 <= nb {
            let mut w = [[_mm512_setzero_si512(); R]; 2];
            let mut sw = [[_mm512_setzero_ps(); R]; 2];
            for r in 0..R {
                prefetch_ahead(d.block_addr(ahead[r], b));
                prefetch_ahead(d.block_addr(ahead[r], b + 2));
                let (v, s) = d.zmm4_u(rows[r], b, tbl_u);
                (w[0][r], w[1][r], sw[0][r], sw[1][r]) = (v[0], v[1], s[0], s[1]);
            }
            pair_dots((&w[0], &sw[0]), &xs, b, &mut acc);
            pair_dots((&w[1], &sw[1]), &xs, b + 2, &mut acc);
            b += 4;
        }
        vnni_finish(d, (rows, ahead), xs, (b, nb), acc)
    }
}

/// `acc + Σ a₀ b₀ + Σ a₁ b₁` by two `vpdpwssd`. Written in assembly because LLVM turns the intrinsic
/// into `vpmaddwd` + `vpaddd` (and did not fuse it back here), two more ops per dot (bench/NOTES.md,
/// session 9).
#[target_feature(enable = "avx512f,avx512vnni")]
#[inline]
pub(super) unsafe fn dpwssd2(
    mut acc: __m512i,
    (a0, b0): (__m512i, __m512i),
    (a1, b1): (__m512i, __m512i),
) -> __m512i {
    std::arch::asm!(
        "vpdpwssd {acc}, {a0}, {b0}",
        "vpdpwssd {acc}, {a1}, {b1}",
        acc = inout(zmm_reg) acc,
        a0 = in(zmm_reg) a0,
        b0 = in(zmm_reg) b0,
        a1 = in(zmm_reg) a1,
        b1 = in(zmm_reg) b1,
        options(pure, nomem, nostack, preserves_flags),
    );
    acc
}

/// The int8 block values and scales the SIMD decode gives for block `b` of row `j` (tests compare
/// them with the scalar decode exactly).
///
/// # Safety
/// The CPU must support AVX2 + F16C (AVX-512 F/BW/VL for the AVX-512 levels, and VBMI for
/// `Avx512Vbmi`); `b + 1` (`b + 3` for `Avx512Vbmi`, which decodes four blocks) must be a block of the
/// row.
#[cfg(test)]
pub(crate) unsafe fn decoded(
    level: X86Level,
    w: &IntWeight<'_>,
    j: usize,
    b: usize,
) -> (Vec<i8>, Vec<f32>) {
    unsafe fn get<D: Decode>(level: X86Level, d: D, j: usize, b: usize) -> (Vec<i8>, Vec<f32>) {
        match level {
            X86Level::Avx2 | X86Level::Avx2Pair | X86Level::Avx2Int16 => ymm_of(d, j, b),
            X86Level::Avx512Vnni => zmm_of(d, j, b),
            X86Level::Avx512Vbmi | X86Level::Avx512Quad => zmm4_of(d, j, b),
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
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vbmi,avx2,fma,f16c")]
    unsafe fn zmm4_of<D: Decode>(d: D, j: usize, b: usize) -> (Vec<i8>, Vec<f32>) {
        let (v, s) = d.zmm4_u(d.row(j), b, table_u(&d));
        let (mut out, mut sc) = (vec![0i8; 128], vec![0f32; 32]);
        for k in 0..2 {
            // Back from unsigned: the values were offset by +128.
            let signed = _mm512_xor_si512(v[k], _mm512_set1_epi8(-128));
            _mm512_storeu_si512(out[64 * k..].as_mut_ptr().cast(), signed);
            _mm512_storeu_ps(sc[16 * k..].as_mut_ptr(), s[k]);
        }
        (out, sc)
    }
    struct Get {
        level: X86Level,
        j: usize,
        b: usize,
    }
    impl WithDecoder for Get {
        type Out = (Vec<i8>, Vec<f32>);
        unsafe fn with<D: Decode>(self, d: D) -> Self::Out {
            get(self.level, d, self.j, self.b)
        }
    }
    with_decoder(w, Get { level, j, b })
}
