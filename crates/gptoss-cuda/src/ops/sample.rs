//! Launcher of `sample.cu`: one token per logit row, greedy or temperature/top-k/top-p, with the engine's
//! counter RNG (the uniform draw is made on the host by `gptoss_engine::sampler::uniform`), some rows
//! limited to the tokens of a bitmask (structured outputs: only the masks travel, 25 KB a row on the real
//! vocabulary, in place of reading the 0.8 MB logit row back).

use gptoss_engine::backend::LogprobRow;
use gptoss_engine::logits::{TokenLogprobs, MAX_TOP_LOGPROBS};
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
    /// Row of the mask buffer, or -1 for none.
    mask_row: i32,
    pad: i32,
}

// SAFETY: #[repr(C)] mirror of `SampleRow` in sample.cu.
unsafe impl cudarc::driver::DeviceRepr for SampleRow {}

#[repr(C)]
struct SampleParams {
    logits: u64,
    rows: u64,
    scratch: u64,
    out: u64,
    masks: u64,
    keys: u64,
    vocab: i32,
    mask_words: i32,
}

/// Slices each row's largest key is first found in (`KEY_SLICES` in sample.cu).
const KEY_SLICES: usize = gptoss_engine::memory::SAMPLER_KEY_SLICES;

// SAFETY: #[repr(C)] mirror of `SampleParams` in sample.cu.
unsafe impl cudarc::driver::DeviceRepr for SampleParams {}

#[repr(C)]
#[derive(Clone, Copy)]
struct LogprobJob {
    row: i32,
    token: u32,
    top_n: i32,
    pad: i32,
}

// SAFETY: #[repr(C)] mirror of `LogprobRow` in sample.cu.
unsafe impl cudarc::driver::DeviceRepr for LogprobJob {}
// SAFETY: plain old data; zero bits are a valid value.
unsafe impl cudarc::driver::ValidAsZeroBits for LogprobJob {}

#[repr(C)]
struct LogprobParams {
    logits: u64,
    jobs: u64,
    out: u64,
    vocab: i32,
    out_stride: i32,
}

// SAFETY: #[repr(C)] mirror of `LogprobParams` in sample.cu.
unsafe impl cudarc::driver::DeviceRepr for LogprobParams {}

/// `u32`s per row of `logprob_rows`' output: the token's log-probability, then (id, log-probability)
/// pairs.
const LOGPROB_STRIDE: usize = 1 + 2 * MAX_TOP_LOGPROBS;

/// The sampler's buffers, sized for `rows` rows of `vocab`.
pub struct SampleScratch {
    params: DevBuf<SampleRow>,
    scratch: DevBuf<f64>,
    out: DevBuf<u32>,
    /// `[rows, KEY_SLICES]`: the largest key of each slice of each row.
    keys: DevBuf<u64>,
    /// `[rows, vocab / 32 rounded up]`: the masked rows' bitsets, packed from the first row.
    masks: DevBuf<u32>,
    /// The packed bitsets on the host, kept across steps.
    host_masks: Vec<u32>,
    lp_jobs: DevBuf<LogprobJob>,
    lp_out: DevBuf<u32>,
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
            mask_row: -1,
            pad: 0,
        };
        Ok(SampleScratch {
            params: DevBuf::from_host(s, m, &vec![zero; rows.max(1)], "sampler scratch")?,
            scratch: DevBuf::zeros(s, m, rows * vocab, "sampler scratch")?,
            out: DevBuf::zeros(s, m, rows, "sampler scratch")?,
            keys: DevBuf::zeros(s, m, rows * KEY_SLICES, "sampler scratch")?,
            masks: DevBuf::zeros(s, m, rows * vocab.div_ceil(32), "sampler masks")?,
            host_masks: Vec::new(),
            lp_jobs: DevBuf::zeros(s, m, rows.max(1), "sampler scratch")?,
            lp_out: DevBuf::zeros(s, m, rows.max(1) * LOGPROB_STRIDE, "sampler scratch")?,
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

/// A row's draw of [`sample`] when masked rows may be among them.
pub const NO_TOKEN: u32 = u32::MAX;

/// Samples one token for each of the first `params.len()` rows of `logits`; a row with a mask in `masks`
/// (one entry per row, or empty for none) draws only among the tokens it allows and gets [`NO_TOKEN`]
/// when none of them has a finite logit (see `gptoss_engine::Backend::sample_masked`).
pub fn sample(
    dev: &Device,
    logits: &CudaBuf,
    params: &[SamplingParams],
    counters: &[u64],
    masks: &[Option<&[u32]>],
    scratch: &mut SampleScratch,
) -> Result<Vec<u32>> {
    let rows = params.len();
    if counters.len() != rows
        || !(masks.is_empty() || masks.len() == rows)
        || rows > logits.rows
        || !scratch.fits(rows, logits.cols)
    {
        return Err(shape_error(
            "sample",
            format!(
                "{rows} rows, {} counters, {} masks, logits [{}, {}]",
                counters.len(),
                masks.len(),
                logits.rows,
                logits.cols
            ),
        ));
    }
    if rows == 0 {
        return Ok(Vec::new());
    }
    let words = logits.cols.div_ceil(32);
    let mut mask_rows = pack_masks(masks, words, &mut scratch.host_masks);
    // No masks at all: every row unmasked (pack_masks answers one entry per given mask).
    mask_rows.resize(rows, -1);
    let host: Vec<SampleRow> = params
        .iter()
        .zip(counters)
        .zip(mask_rows)
        .map(|((p, &c), mask_row)| SampleRow {
            u: uniform(p.seed, c),
            temperature: p.temperature,
            top_p: p.top_p,
            top_k: p.top_k.min(i32::MAX as usize) as i32,
            greedy: i32::from(p.temperature <= 0.0 || p.top_k == 1),
            mask_row,
            pad: 0,
        })
        .collect();
    let mut dst = scratch.params.slice.slice_mut(0..rows);
    dev.stream
        .memcpy_htod(&host, &mut dst)
        .map_err(|e| CudaError::driver("copying sampling parameters", e))?;
    if !scratch.host_masks.is_empty() {
        let mut dst = scratch.masks.slice.slice_mut(0..scratch.host_masks.len());
        dev.stream
            .memcpy_htod(&scratch.host_masks, &mut dst)
            .map_err(|e| CudaError::driver("copying token masks", e))?;
    }
    let p = SampleParams {
        logits: logits.buf.ptr(),
        rows: scratch.params.ptr(),
        scratch: scratch.scratch.ptr(),
        out: scratch.out.ptr(),
        masks: scratch.masks.ptr(),
        keys: scratch.keys.ptr(),
        vocab: logits.cols as i32,
        mask_words: words as i32,
    };
    dev.launch(
        Func::RowMaxKeys,
        cfg((rows as u32, KEY_SLICES as u32, 1), 256),
        &p,
    )?;
    dev.launch(Func::Sample, cfg((rows as u32, 1, 1), 1024), &p)?;
    let mut out = vec![0u32; rows];
    dev.stream
        .memcpy_dtoh(&scratch.out.slice.slice(0..rows), &mut out)
        .map_err(|e| CudaError::driver("reading sampled tokens", e))?;
    dev.sync()?;
    Ok(out)
}

/// The log-probabilities of each listed row's token and of its most likely tokens, from the raw logits
/// (`gptoss_engine::logits::token_logprobs` on the device; `logprob_rows` in sample.cu).
pub fn logprobs(
    dev: &Device,
    logits: &CudaBuf,
    rows: &[LogprobRow],
    scratch: &mut SampleScratch,
) -> Result<Vec<TokenLogprobs>> {
    if rows.len() > scratch.rows
        || logits.cols != scratch.vocab
        || rows.iter().any(|r| r.row >= logits.rows)
    {
        return Err(shape_error(
            "logprobs",
            format!(
                "{} rows (largest index {:?}) of logits [{}, {}]",
                rows.len(),
                rows.iter().map(|r| r.row).max(),
                logits.rows,
                logits.cols
            ),
        ));
    }
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let jobs: Vec<LogprobJob> = rows
        .iter()
        .map(|r| LogprobJob {
            row: r.row as i32,
            token: r.token,
            top_n: r.top.min(MAX_TOP_LOGPROBS).min(logits.cols) as i32,
            pad: 0,
        })
        .collect();
    let mut dst = scratch.lp_jobs.slice.slice_mut(0..rows.len());
    dev.stream
        .memcpy_htod(&jobs, &mut dst)
        .map_err(|e| CudaError::driver("copying log-probability rows", e))?;
    let p = LogprobParams {
        logits: logits.buf.ptr(),
        jobs: scratch.lp_jobs.ptr(),
        out: scratch.lp_out.ptr(),
        vocab: logits.cols as i32,
        out_stride: LOGPROB_STRIDE as i32,
    };
    dev.launch(Func::Logprobs, cfg((rows.len() as u32, 1, 1), 1024), &p)?;
    let mut out = vec![0u32; rows.len() * LOGPROB_STRIDE];
    dev.stream
        .memcpy_dtoh(&scratch.lp_out.slice.slice(0..out.len()), &mut out)
        .map_err(|e| CudaError::driver("reading log-probabilities", e))?;
    dev.sync()?;
    Ok(jobs
        .iter()
        .zip(out.chunks_exact(LOGPROB_STRIDE))
        .map(|(j, o)| TokenLogprobs {
            token: j.token,
            logprob: f32::from_bits(o[0]),
            top: o[1..1 + 2 * j.top_n as usize]
                .chunks_exact(2)
                .map(|p| (p[0], f32::from_bits(p[1])))
                .collect(),
        })
        .collect())
}

/// Packs the given masks into `packed`, `words` words each (a shorter mask is padded with zero words:
/// tokens past it are not allowed); returns each row's index in the packing, or -1.
fn pack_masks(masks: &[Option<&[u32]>], words: usize, packed: &mut Vec<u32>) -> Vec<i32> {
    packed.clear();
    let mut next = 0;
    let mut index = vec![-1; masks.len()];
    for (slot, mask) in index.iter_mut().zip(masks) {
        let Some(mask) = mask else { continue };
        let n = mask.len().min(words);
        packed.extend_from_slice(mask.get(..n).unwrap_or(&[]));
        packed.resize(packed.len() + words - n, 0);
        *slot = next;
        next += 1;
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_packed_to_whole_rows() {
        let (a, b) = ([1u32, 2, 3], [7u32]);
        let mut packed = vec![9; 4];
        let rows = pack_masks(&[None, Some(&a), None, Some(&b)], 2, &mut packed);
        assert_eq!(rows, [-1, 0, -1, 1]);
        // The longer mask is cut to the vocabulary's words, the shorter one padded with zeros.
        assert_eq!(packed, [1, 2, 7, 0]);
        assert_eq!(pack_masks(&[None, None], 2, &mut packed), [-1, -1]);
        assert!(packed.is_empty());
    }
}
