//! Launcher of `sample.cu`: one token per logit row, greedy or temperature/top-k/top-p, with the engine's
//! counter RNG (the uniform draw is made on the host by `gptoss_engine::sampler::uniform`).

use gptoss_engine::sampler::uniform;
use gptoss_engine::SamplingParams;

use crate::backend::CudaBuf;
use crate::device::Device;
use crate::error::{CudaError, Result};
use crate::kernels::Func;
use crate::ops::{cfg, shape_error};
use crate::vram::DevBuf;

#[repr(C)]
#[derive(Clone, Copy)]
struct SampleRow {
    u: f64,
    temperature: f32,
    top_p: f32,
    top_k: i32,
    greedy: i32,
}

// SAFETY: #[repr(C)] mirror of `SampleRow` in sample.cu.
unsafe impl cudarc::driver::DeviceRepr for SampleRow {}

#[repr(C)]
struct SampleParams {
    logits: u64,
    rows: u64,
    scratch: u64,
    out: u64,
    vocab: i32,
    pad: i32,
}

// SAFETY: #[repr(C)] mirror of `SampleParams` in sample.cu.
unsafe impl cudarc::driver::DeviceRepr for SampleParams {}

/// The sampler's buffers, sized for `rows` rows of `vocab`.
pub struct SampleScratch {
    params: DevBuf<SampleRow>,
    scratch: DevBuf<f64>,
    out: DevBuf<u32>,
    rows: usize,
    vocab: usize,
}

impl SampleScratch {
    /// Allocates for `rows` rows of `vocab` logits.
    pub fn new(dev: &Device, rows: usize, vocab: usize) -> Result<Self> {
        let (s, m) = (&dev.stream, &dev.meter);
        let zero = SampleRow {
            u: 0.0,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            greedy: 1,
        };
        Ok(SampleScratch {
            params: DevBuf::from_host(s, m, &vec![zero; rows.max(1)], "sampler scratch")?,
            scratch: DevBuf::zeros(s, m, rows * vocab, "sampler scratch")?,
            out: DevBuf::zeros(s, m, rows, "sampler scratch")?,
            rows,
            vocab,
        })
    }

    /// Whether it serves `rows` rows of `vocab`.
    pub fn fits(&self, rows: usize, vocab: usize) -> bool {
        rows <= self.rows && vocab == self.vocab
    }
}

// SAFETY: SampleRow is plain old data; zero bits are a valid value.
unsafe impl cudarc::driver::ValidAsZeroBits for SampleRow {}

/// Samples one token for each of the first `params.len()` rows of `logits`.
pub fn sample(
    dev: &Device,
    logits: &CudaBuf,
    params: &[SamplingParams],
    counters: &[u64],
    scratch: &mut SampleScratch,
) -> Result<Vec<u32>> {
    let rows = params.len();
    if counters.len() != rows || rows > logits.rows || !scratch.fits(rows, logits.cols) {
        return Err(shape_error(
            "sample",
            format!(
                "{rows} rows, {} counters, logits [{}, {}]",
                counters.len(),
                logits.rows,
                logits.cols
            ),
        ));
    }
    if rows == 0 {
        return Ok(Vec::new());
    }
    let host: Vec<SampleRow> = params
        .iter()
        .zip(counters)
        .map(|(p, &c)| SampleRow {
            u: uniform(p.seed, c),
            temperature: p.temperature,
            top_p: p.top_p,
            top_k: p.top_k.min(i32::MAX as usize) as i32,
            greedy: i32::from(p.temperature <= 0.0 || p.top_k == 1),
        })
        .collect();
    let mut dst = scratch.params.slice.slice_mut(0..rows);
    dev.stream
        .memcpy_htod(&host, &mut dst)
        .map_err(|e| CudaError::driver("copying sampling parameters", e))?;
    let p = SampleParams {
        logits: logits.buf.ptr(),
        rows: scratch.params.ptr(),
        scratch: scratch.scratch.ptr(),
        out: scratch.out.ptr(),
        vocab: logits.cols as i32,
        pad: 0,
    };
    dev.launch(Func::Sample, cfg((rows as u32, 1, 1), 1024), &p)?;
    let mut out = vec![0u32; rows];
    dev.stream
        .memcpy_dtoh(&scratch.out.slice.slice(0..rows), &mut out)
        .map_err(|e| CudaError::driver("reading sampled tokens", e))?;
    dev.sync()?;
    Ok(out)
}
