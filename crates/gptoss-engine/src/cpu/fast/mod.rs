//! The fast CPU matmul (the default CPU path; `--exact` keeps the f32 reference of `matmul.rs`). As in
//! llama.cpp, each activation row is quantized to int8 blocks of 32 with an f32 scale, and every weight
//! whose values are small integers times a block scale (MXFP4 in both layouts, Q4_0, IQ4_NL, Q8_0) is
//! read as int8 blocks and dotted with integer instructions (AVX-512 VNNI or AVX2, detected at run
//! time; scalar elsewhere). bf16 weights meet bf16-rounded activations (AVX-512 BF16). Every other
//! format, and bf16 without AVX-512 BF16, takes the exact path. Rows are split over all cores; the
//! quantized activations live in a buffer reused from call to call.

mod acts;
#[cfg(test)]
mod bench;
mod bf16_x86;
mod decode_x86;
mod int8_x86;
mod portable;
mod quad_x86;
#[cfg(test)]
mod testing;
mod weights;

use gptoss_formats::QuantTensor;
use rayon::prelude::*;

use acts::{Bf16Acts, QuantActs, QuantView};
use weights::{Bf16Weight, IntWeight};

/// Activation rows of one tile of the SIMD kernels.
const TILE_COLS: usize = 4;
/// Weight rows per parallel task (a multiple of the kernels' 2-, 3- and 4-row tiles).
const TASK_ROWS: usize = 24;

/// The instruction set of the fast CPU kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuIsa {
    /// AVX-512 F/BW/DQ/VL with VNNI (and AVX-512 BF16 for bf16 weights when the CPU has it).
    Avx512,
    /// AVX2 with FMA and F16C.
    Avx2,
    /// Plain Rust (any CPU).
    Portable,
}

impl CpuIsa {
    /// The best set this CPU supports.
    pub fn best() -> Self {
        [CpuIsa::Avx512, CpuIsa::Avx2]
            .into_iter()
            .find(|i| i.supported())
            .unwrap_or(CpuIsa::Portable)
    }

    /// Whether this CPU can run the set.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            match self {
                CpuIsa::Avx512 => {
                    avx2 && is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512bw")
                        && is_x86_feature_detected!("avx512dq")
                        && is_x86_feature_detected!("avx512vl")
                        && is_x86_feature_detected!("avx512vnni")
                }
                CpuIsa::Avx2 => avx2,
                CpuIsa::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == CpuIsa::Portable
        }
    }

    /// Whether bf16 weights get the AVX-512 BF16 kernel.
    fn bf16_dot(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            self == CpuIsa::Avx512 && is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// A short name for logs (`avx512`, `avx2`, `portable`).
    pub fn name(self) -> &'static str {
        match self {
            CpuIsa::Avx512 => "avx512",
            CpuIsa::Avx2 => "avx2",
            CpuIsa::Portable => "portable",
        }
    }
}

/// Buffers of the fast path, kept between calls so a step allocates nothing once warm.
#[derive(Default)]
pub(crate) struct Scratch {
    quant: QuantActs,
    bf16: Bf16Acts,
}

/// `[rows, n_out]` f32 results written by many tasks, each to its own columns.
#[derive(Clone, Copy)]
pub(crate) struct OutRows {
    ptr: *mut f32,
    n_out: usize,
}

// SAFETY: tasks write disjoint columns (their own weight rows) of the buffer, which outlives them.
unsafe impl Send for OutRows {}
// SAFETY: as above.
unsafe impl Sync for OutRows {}

impl OutRows {
    /// `out[t, j] = v`.
    ///
    /// # Safety
    /// `(t, j)` is inside the buffer and no other thread writes it.
    #[inline(always)]
    pub(crate) unsafe fn set(&self, t: usize, j: usize, v: f32) {
        *self.ptr.add(t * self.n_out + j) = v;
    }

    /// `out[t, cols]` to read.
    ///
    /// # Safety
    /// The piece is inside the buffer and no thread writes it while the slice lives.
    #[inline(always)]
    pub(crate) unsafe fn piece(&self, t: usize, cols: std::ops::Range<usize>) -> &[f32] {
        std::slice::from_raw_parts(self.ptr.add(t * self.n_out + cols.start), cols.len())
    }

    /// The same buffer starting at row `t`.
    ///
    /// # Safety
    /// Row `t` is inside the buffer.
    #[inline(always)]
    pub(crate) unsafe fn at_row(&self, t: usize) -> OutRows {
        OutRows {
            ptr: self.ptr.add(t * self.n_out),
            n_out: self.n_out,
        }
    }

    /// `out[t, j] += v`.
    ///
    /// # Safety
    /// As [`OutRows::set`].
    #[inline(always)]
    pub(crate) unsafe fn add(&self, t: usize, j: usize, v: f32) {
        *self.ptr.add(t * self.n_out + j) += v;
    }
}

/// The fast matmul with its instruction set and reusable buffers.
pub(crate) struct FastMatmul<'a> {
    /// Instruction set of the kernels.
    pub isa: CpuIsa,
    /// Reused buffers.
    pub scratch: &'a mut Scratch,
}

impl FastMatmul<'_> {
    /// `out[t, j] = Σ_i x[t, i] · W[j, i] + bias[j]` for `rows` input rows (`x` `[rows, in]`, `out`
    /// `[rows, out]`), in the fast arithmetic where `w`'s format has it, else exactly.
    pub(crate) fn run(
        &mut self,
        x: &[f32],
        rows: usize,
        w: &QuantTensor,
        bias: Option<&[f32]>,
        out: &mut [f32],
    ) {
        let (n, n_out) = (w.row_len(), w.n_rows());
        let sized = x.len() >= rows * n
            && out.len() >= rows * n_out
            && bias.is_none_or(|b| b.len() >= n_out);
        if rows == 0 || !sized {
            return super::matmul::matmul(x, rows, w, bias, out);
        }
        let sink = OutRows {
            ptr: out.as_mut_ptr(),
            n_out,
        };
        if let Some(iw) = IntWeight::of(w) {
            self.scratch
                .quant
                .quantize_for(x, rows, n, iw.layout(), false);
            let acts = &self.scratch.quant.view(0..rows);
            let isa = self.isa;
            for_tasks(n_out, |r| {
                // SAFETY: `isa` is supported (checked where the backend was made), `out` holds
                // `[rows, n_out]` (checked above) and each task owns its weight rows' columns.
                unsafe { int8_task(isa, &iw, acts, r, bias, sink) }
            });
            return;
        }
        if let Some(bw) = Bf16Weight::of(w).filter(|_| self.isa.bf16_dot()) {
            self.scratch.bf16.split(x, rows, n);
            let acts = &self.scratch.bf16;
            for_tasks(n_out, |r| {
                // SAFETY: AVX-512 BF16 was detected (bf16_dot), `out` holds `[rows, n_out]` and each
                // task owns its weight rows' columns.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    bf16_x86::task(&bw, acts, rows, r, bias, sink)
                }
            });
            return;
        }
        super::matmul::matmul(x, rows, w, bias, out)
    }
}

/// Output values of a segment below which [`RowsDone`] is called on its rows serially (segments whose
/// weights take no int8 tasks).
const DONE_PARALLEL_MIN: usize = 4096;

/// What a segment run calls on each piece of output as soon as it is final: `(t, j0, out[t, j0..j0 + len])`,
/// a task's weight rows (`j0` a multiple of [`TASK_ROWS`], even) or a whole row, so every piece has an even
/// length where rows do. Called from the worker that wrote the piece, so work that reads it (the MoE's
/// SwiGLU over (gate, up) pairs) needs no pass of its own.
pub(crate) type RowsDone<'a> = Option<&'a (dyn Fn(usize, usize, &[f32]) + Sync)>;

/// Hands `done` the whole rows of `part` (`out` rows from `first_row` on, `n_out` each) once they are final: the
/// pieces of a segment computed without int8 tasks. In parallel once it is worth a region (a prompt's rows),
/// as the MoE's SwiGLU pass was.
pub(crate) fn report_rows(done: RowsDone<'_>, first_row: usize, part: &[f32], n_out: usize) {
    let Some(done) = done.filter(|_| n_out > 0) else {
        return;
    };
    if part.len() >= DONE_PARALLEL_MIN {
        part.par_chunks_exact(n_out)
            .enumerate()
            .for_each(|(i, row)| done(first_row + i, 0, row));
    } else {
        for (i, row) in part.chunks_exact(n_out).enumerate() {
            done(first_row + i, 0, row);
        }
    }
}

/// One weight applied to a run of rows of a shared input and output (one expert of a MoE layer).
pub(crate) struct Segment<'a> {
    /// Rows of the input and of the output.
    pub rows: std::ops::Range<usize>,
    /// `[n_out, n_in]`, the same shape in every segment.
    pub w: &'a QuantTensor,
    /// `[n_out]`.
    pub bias: Option<&'a [f32]>,
}

impl FastMatmul<'_> {
    /// `out[t] = x[t] W_sᵀ + b_s` for the rows `t` of each segment `s`: one quantization of the input
    /// and one parallel region for all segments when every weight has an int8 view in one layout (fewer
    /// joins than a call per segment: a MoE decode step has 8 expert matmuls per layer); segment by
    /// segment otherwise. `x` is `[rows, n_in]`, `out` `[rows, n_out]`.
    /// `done`, if given, sees every piece of `out` once it is final ([`RowsDone`]).
    pub(crate) fn run_segments(
        &mut self,
        x: &[f32],
        segs: &[Segment<'_>],
        out: &mut [f32],
        done: RowsDone<'_>,
    ) {
        let Some(first) = segs.first() else { return };
        let (n, n_out) = (first.w.row_len(), first.w.n_rows());
        let rows = segs.iter().map(|s| s.rows.end).max().unwrap_or(0);
        let views: Option<Vec<IntWeight<'_>>> = segs
            .iter()
            .map(|s| {
                IntWeight::of(s.w).filter(|iw| {
                    (s.w.row_len(), s.w.n_rows()) == (n, n_out)
                        && s.bias.is_none_or(|b| b.len() >= n_out)
                        && iw.layout() == IntWeight::of(first.w).map_or(iw.layout(), |f| f.layout())
                })
            })
            .collect();
        let sized = x.len() >= rows * n && out.len() >= rows * n_out;
        let (Some(views), true) = (views, sized) else {
            for s in segs {
                let (a, b) = (s.rows.start, s.rows.end);
                let part = &mut out[a * n_out..b * n_out];
                self.run(&x[a * n..b * n], b - a, s.w, s.bias, part);
                report_rows(done, a, part, n_out);
            }
            return;
        };
        let layout = views
            .first()
            .map(IntWeight::layout)
            .unwrap_or(weights::ActLayout::Natural);
        self.scratch.quant.quantize_for(x, rows, n, layout, false);
        let quant = &self.scratch.quant;
        let base = OutRows {
            ptr: out.as_mut_ptr(),
            n_out,
        };
        let per_seg = n_out.div_ceil(TASK_ROWS);
        let isa = self.isa;
        (0..segs.len() * per_seg).into_par_iter().for_each(|i| {
            let (s, task) = (i / per_seg, i % per_seg);
            let (seg, iw) = (&segs[s], &views[s]);
            let r = task * TASK_ROWS..((task + 1) * TASK_ROWS).min(n_out);
            let acts = quant.view(seg.rows.clone());
            // SAFETY: `out` holds `[rows, n_out]` (checked) and the segment's rows are inside it.
            let sink = unsafe { base.at_row(seg.rows.start) };
            // SAFETY: `isa` is supported; each (segment, task) owns its rows × columns of `out`
            // (segments' rows do not overlap).
            unsafe { int8_task(isa, iw, &acts, r.clone(), seg.bias, sink) }
            if let Some(done) = done {
                for t in seg.rows.clone() {
                    // SAFETY: this task wrote out[t, r] just now and no other task touches it.
                    let piece = unsafe { base.piece(t, r.clone()) };
                    done(t, r.start, piece);
                }
            }
        });
    }
}

/// Runs `f` on tasks of [`TASK_ROWS`] weight rows across the cores.
fn for_tasks(n_out: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    (0..n_out.div_ceil(TASK_ROWS))
        .into_par_iter()
        .for_each(|i| f(i * TASK_ROWS..((i + 1) * TASK_ROWS).min(n_out)));
}

/// One int8 task on `isa`.
///
/// # Safety
/// `isa` must be supported by this CPU; see [`portable::task`] for `out`.
unsafe fn int8_task(
    isa: CpuIsa,
    w: &IntWeight<'_>,
    acts: &QuantView<'_>,
    rows: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    out: OutRows,
) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        CpuIsa::Avx512 => {
            return int8_x86::task(int8_x86::X86Level::avx512(), w, acts, rows, bias, out)
        }
        CpuIsa::Avx2 => {
            return int8_x86::task(int8_x86::X86Level::Avx2Pair, w, acts, rows, bias, out)
        }
        CpuIsa::Portable => {}
    }
    let _ = isa;
    portable::task(w, acts, rows, bias, out)
}

#[cfg(test)]
mod tests;
