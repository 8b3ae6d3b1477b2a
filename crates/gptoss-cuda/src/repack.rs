//! Repacking as unit maps. Each array of a packed weight (its codes or elements, its scales) is a
//! [`UnitMap`]: a run of equal-sized source units, each turned into one output unit. Any run of units
//! can be built on its own, so an upload builds them in parallel (rayon), straight into pinned staging
//! buffers, while the previous buffer is being copied to the device (`staging.rs`); [`crate::weights::pack`]
//! builds whole arrays from the same maps. The layouts are the ones `kernels/common.cu` reads
//! (described in `weights.rs`). A plan also says when the device can build the same arrays from the raw
//! blocks ([`PackPlan::raw`], `device_repack.rs`), which uploads then do instead (unless `GPTOSS_REPACK=host`).

use std::borrow::Cow;

use gptoss_formats::tensor::{Q8_0_BLOCK, Q8_0_BLOCK_BYTES};
use gptoss_formats::{
    DType, Lut4, Lut4Scales, NibbleOrder, QuantTensor, ScaleFormat, Storage, TensorFormat,
};
use rayon::prelude::*;

use crate::device_repack::RawPlan;
use crate::error::{CudaError, Result};
use crate::kernels::WeightKind;
use crate::weights::{WeightLayout, ROUND_BF16, ROUND_F16, ROUND_NONE};

/// What is done to each source unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UnitOp {
    /// The unit as is.
    Copy,
    /// The unit, then zeros up to the output unit (dense rows padded to 8 elements).
    Pad,
    /// The output unit's length of bytes from `skip` (Q8_0 codes after the scale, an inline scale).
    Take { skip: usize },
    /// The f16 at `skip` as an f32 (the kernels read 4-bit scales stored as f16 as f32).
    F16ToF32 { skip: usize },
    /// One 4-bit block's codes from `skip`, rewritten low nibble first.
    Codes { skip: usize, order: NibbleOrder },
}

/// One packed array as `units` source units of `in_bytes` (from `src`), each becoming `out_bytes`.
#[derive(Clone, Debug)]
pub struct UnitMap<'a> {
    src: Cow<'a, Storage>,
    units: usize,
    in_bytes: usize,
    out_bytes: usize,
    op: UnitOp,
}

/// Output bytes per parallel task of [`UnitMap::fill_par`]: large enough that a task's fixed cost
/// (a source window, a rayon split) is negligible, small enough that a 32 MiB staging slot is ≥ 100 tasks.
pub const TASK_BYTES: usize = 256 << 10;

impl<'a> UnitMap<'a> {
    fn new(src: Cow<'a, Storage>, units: usize, (in_bytes, out_bytes): (usize, usize)) -> Self {
        Self::with_op(src, units, (in_bytes, out_bytes), UnitOp::Copy)
    }

    fn with_op(
        src: Cow<'a, Storage>,
        units: usize,
        (in_bytes, out_bytes): (usize, usize),
        op: UnitOp,
    ) -> Self {
        let fits = match op {
            UnitOp::Copy => in_bytes == out_bytes,
            UnitOp::Pad => in_bytes <= out_bytes,
            UnitOp::Take { skip } | UnitOp::Codes { skip, .. } => skip + out_bytes <= in_bytes,
            UnitOp::F16ToF32 { skip } => skip + 2 <= in_bytes && out_bytes == 4,
        };
        debug_assert!(
            fits,
            "{op:?} does not fit units of {in_bytes} → {out_bytes} bytes"
        );
        // An empty unit makes an empty array (a zero-width tensor); no unit count then matters.
        let units = if out_bytes == 0 { 0 } else { units };
        UnitMap {
            src,
            units,
            in_bytes,
            out_bytes,
            op,
        }
    }

    /// Bytes of the whole output array.
    pub fn len_bytes(&self) -> usize {
        self.units * self.out_bytes
    }

    /// Bytes of one output unit (every piece built on its own is whole units).
    pub fn unit_bytes(&self) -> usize {
        self.out_bytes
    }

    /// Number of units.
    pub fn units(&self) -> usize {
        self.units
    }

    /// The output without copying, when it is the source bytes unchanged.
    pub(crate) fn borrowed(&self) -> Option<&'a [u8]> {
        match (&self.src, self.op) {
            (Cow::Borrowed(s), UnitOp::Copy) if !s.is_lazy() => s.bytes().get(..self.len_bytes()),
            _ => None,
        }
    }

    /// Builds output units `[first, first + out.len() / unit_bytes)` into `out` on this thread.
    pub fn fill(&self, first: usize, out: &mut [u8]) -> Result<()> {
        let n = self.check_range(first, out.len())?;
        if n == 0 {
            return Ok(());
        }
        let src = self
            .src
            .read_range(first * self.in_bytes, n * self.in_bytes)
            .ok_or_else(|| self.range_error(first, n))?;
        let (ib, ob) = (self.in_bytes, self.out_bytes);
        let pairs = out.chunks_exact_mut(ob).zip(src.chunks_exact(ib));
        match self.op {
            UnitOp::Copy => out.copy_from_slice(&src),
            UnitOp::Pad => pairs.for_each(|(o, i)| {
                o[..ib].copy_from_slice(i);
                o[ib..].fill(0);
            }),
            // Units are a few bytes: sizes known at compile time keep each copy a move, not a call.
            UnitOp::Take { skip } => match ob {
                1 => take::<1>(&src, out, ib, skip),
                2 => take::<2>(&src, out, ib, skip),
                4 => take::<4>(&src, out, ib, skip),
                32 => take::<32>(&src, out, ib, skip),
                _ => pairs.for_each(|(o, i)| o.copy_from_slice(&i[skip..skip + ob])),
            },
            UnitOp::F16ToF32 { skip } => pairs.for_each(|(o, i)| {
                let v = half::f16::from_le_bytes([i[skip], i[skip + 1]]).to_f32();
                o.copy_from_slice(&v.to_le_bytes());
            }),
            UnitOp::Codes {
                skip,
                order: NibbleOrder::SplitHalves,
            } if ob == 16 => pairs.for_each(|(o, i)| {
                let s = <&[u8; 16]>::try_from(&i[skip..skip + 16]);
                if let (Ok(s), Ok(o)) = (s, <&mut [u8; 16]>::try_from(o)) {
                    split_halves_32(s, o);
                }
            }),
            UnitOp::Codes { skip, order } => {
                pairs.for_each(|(o, i)| low_first(order, &i[skip..skip + ob], o))
            }
        }
        Ok(())
    }

    /// [`UnitMap::fill`] split into tasks of about `task_bytes` output bytes run on rayon's pool.
    pub fn fill_par(&self, first: usize, out: &mut [u8], task_bytes: usize) -> Result<()> {
        self.check_range(first, out.len())?;
        if self.out_bytes == 0 || out.is_empty() {
            return Ok(());
        }
        let per_task = (task_bytes / self.out_bytes).max(1);
        out.par_chunks_mut(per_task * self.out_bytes)
            .enumerate()
            .try_for_each(|(i, piece)| self.fill(first + i * per_task, piece))
    }

    /// Checks `[first, first + len / unit)` is whole units within the array; returns the unit count.
    fn check_range(&self, first: usize, len: usize) -> Result<usize> {
        if self.out_bytes == 0 {
            return if len == 0 {
                Ok(0)
            } else {
                Err(self.range_error(first, len))
            };
        }
        let n = len / self.out_bytes;
        if n * self.out_bytes != len || first.saturating_add(n) > self.units {
            return Err(self.range_error(first, n));
        }
        Ok(n)
    }

    fn range_error(&self, first: usize, n: usize) -> CudaError {
        CudaError::Unsupported(format!(
            "repacking units [{first}, {first}+{n}) of {} ({} source bytes each, {} stored)",
            self.units,
            self.in_bytes,
            self.src.len()
        ))
    }
}

/// `N` bytes from `skip` of each `ib`-byte unit of `src`, back to back in `out`.
fn take<const N: usize>(src: &[u8], out: &mut [u8], ib: usize, skip: usize) {
    for (o, i) in out.chunks_exact_mut(N).zip(src.chunks_exact(ib)) {
        let i = <&[u8; N]>::try_from(&i[skip..skip + N]);
        if let (Ok(o), Ok(i)) = (<&mut [u8; N]>::try_from(o), i) {
            *o = *i;
        }
    }
}

/// [`low_first`] of a 32-element split-halves block (ggml Q4_0, IQ4_NL, MXFP4), unrolled.
#[inline(always)]
fn split_halves_32(s: &[u8; 16], o: &mut [u8; 16]) {
    for i in 0..8 {
        let (a, b) = (s[2 * i], s[2 * i + 1]);
        o[i] = (a & 0x0F) | (b << 4);
        o[8 + i] = (a >> 4) | (b & 0xF0);
    }
}

/// Rewrites one block's code bytes `src` (in `order`) low nibble first into `out`.
fn low_first(order: NibbleOrder, src: &[u8], out: &mut [u8]) {
    match order {
        NibbleOrder::LowFirst => out.copy_from_slice(src),
        NibbleOrder::HighFirst => out
            .iter_mut()
            .zip(src)
            .for_each(|(o, s)| *o = s.rotate_left(4)),
        NibbleOrder::SplitHalves => {
            // Codes j < n/2 are the low nibbles of src[j], codes j >= n/2 the high nibbles of
            // src[j - n/2]; output byte i holds codes 2i and 2i + 1, so the first half of the
            // output comes from low nibbles and the second from high nibbles, pair by pair.
            let (lo, hi) = out.split_at_mut(src.len() / 2);
            for ((l, h), p) in lo.iter_mut().zip(hi).zip(src.chunks_exact(2)) {
                *l = (p[0] & 0x0F) | (p[1] << 4);
                *h = (p[0] >> 4) | (p[1] & 0xF0);
            }
        }
    }
}

/// How to build one weight in a kernel layout: its layout and the maps of its arrays.
#[derive(Clone, Debug)]
pub struct PackPlan<'a> {
    /// The kernel layout.
    pub layout: WeightLayout,
    /// Codes or elements.
    pub data: UnitMap<'a>,
    /// Scales (Q8 and 4-bit kinds).
    pub scales: Option<UnitMap<'a>>,
    /// The same arrays made on the device from the raw blocks, where the format allows
    /// (`device_repack.rs`).
    pub raw: Option<RawPlan<'a>>,
}

impl<'a> PackPlan<'a> {
    /// The plan of `t` (its last dim is the row), after checking its bytes agree with its shape and
    /// format (so every unit read below is in range).
    pub fn new(t: &'a QuantTensor) -> Result<Self> {
        t.validate("upload", &format!("{:?} tensor", t.shape))
            .map_err(|e| CudaError::Unsupported(e.to_string()))?;
        let (rows, k) = (t.n_rows(), t.row_len());
        let layout = |kind, ld| WeightLayout {
            kind,
            rows,
            k,
            ld,
            block: 32,
            round: ROUND_NONE,
            table: [0.0; 16],
        };
        let src = source(&t.data);
        let mut plan = match &t.format {
            TensorFormat::Dense(d) => {
                let kind = match d {
                    DType::F32 => WeightKind::F32,
                    DType::BF16 => WeightKind::Bf16,
                    DType::F16 => WeightKind::F16,
                };
                let (size, ld) = (d.size_bytes(), k.div_ceil(8) * 8);
                let op = if ld == k { UnitOp::Copy } else { UnitOp::Pad };
                PackPlan {
                    layout: layout(kind, ld),
                    data: UnitMap::with_op(src, rows, (k * size, ld * size), op),
                    scales: None,
                    raw: None,
                }
            }
            TensorFormat::Q8_0 => {
                let blocks = rows * k / Q8_0_BLOCK;
                let take = |skip, out| {
                    let op = UnitOp::Take { skip };
                    UnitMap::with_op(src.clone(), blocks, (Q8_0_BLOCK_BYTES, out), op)
                };
                PackPlan {
                    layout: layout(WeightKind::Q8, k),
                    data: take(2, Q8_0_BLOCK),
                    scales: Some(take(0, 2)),
                    raw: None,
                }
            }
            TensorFormat::Lut4(l)
                if l.block_elems.is_multiple_of(8) && k.is_multiple_of(l.block_elems) =>
            {
                lut4_plan(src, l, layout(WeightKind::Lut4E8m0, k))
            }
            TensorFormat::Lut4(_) => {
                // Scale blocks straddle rows: store the decoded values (exact) as f32, built here.
                let m = t.materialized();
                let ld = k.div_ceil(8) * 8;
                let mut data = vec![0u8; rows * ld * 4];
                let mut row = vec![0.0f32; k];
                for (r, dst) in data.chunks_exact_mut(ld * 4).enumerate() {
                    m.dequantize_row(r, &mut row);
                    for (d, v) in dst.chunks_exact_mut(4).zip(&row) {
                        d.copy_from_slice(&v.to_le_bytes());
                    }
                }
                PackPlan {
                    layout: layout(WeightKind::F32, ld),
                    data: UnitMap::new(Cow::Owned(Storage::owned(data)), rows, (ld * 4, ld * 4)),
                    scales: None,
                    raw: None,
                }
            }
        };
        plan.raw = RawPlan::new(t);
        Ok(plan)
    }

    /// Device bytes (must equal `gptoss_engine::memory::tensor_bytes`).
    pub fn size_bytes(&self) -> usize {
        self.data.len_bytes() + self.scales.as_ref().map_or(0, UnitMap::len_bytes)
    }

    /// Whether two plans build weights that can share one kernel launch (same layout and sizes).
    pub fn same_layout(&self, other: &PackPlan<'_>) -> bool {
        let scale_bytes = |p: &PackPlan<'_>| p.scales.as_ref().map(UnitMap::len_bytes);
        self.layout == other.layout
            && self.data.len_bytes() == other.data.len_bytes()
            && scale_bytes(self) == scale_bytes(other)
    }

    /// Starts reading the mapped file pages the plan reads (see [`Storage::prefetch`]).
    pub fn prefetch(&self) {
        self.sources().for_each(Storage::prefetch);
    }

    /// Drops the mapped file pages the plan read from this process (see [`Storage::release_pages`]).
    pub fn release_pages(&self) {
        self.sources().for_each(Storage::release_pages);
    }

    fn sources(&self) -> impl Iterator<Item = &Storage> {
        std::iter::once(&*self.data.src).chain(self.scales.iter().map(|s| &*s.src))
    }
}

/// `s` as a source of windows: itself, or built once now when windows of it would each build the whole.
fn source(s: &Storage) -> Cow<'_, Storage> {
    if s.reads_windows_cheaply() {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.materialized().into_owned())
    }
}

/// A 4-bit tensor whose scale blocks do not straddle rows: codes low nibble first, one scale per block.
fn lut4_plan<'a>(codes: Cow<'a, Storage>, l: &'a Lut4, base: WeightLayout) -> PackPlan<'a> {
    let be = l.block_elems;
    let blocks = base.rows * base.k / be;
    let (data, scales, format) = match &l.scales {
        Lut4Scales::Separate { format, data } => {
            let size = format.size_bytes();
            let (op, out) = match format {
                ScaleFormat::F16 => (UnitOp::F16ToF32 { skip: 0 }, 4),
                ScaleFormat::E8M0 | ScaleFormat::F32 => (UnitOp::Copy, size),
            };
            (
                UnitMap::with_op(codes, blocks, (be / 2, be / 2), codes_op(l.nibbles, 0)),
                UnitMap::with_op(source(data), blocks, (size, out), op),
                *format,
            )
        }
        Lut4Scales::Inline { format } => {
            let (size, stride) = (format.size_bytes(), l.block_bytes());
            let (op, out) = match format {
                ScaleFormat::F16 => (UnitOp::F16ToF32 { skip: 0 }, 4),
                ScaleFormat::E8M0 | ScaleFormat::F32 => (UnitOp::Take { skip: 0 }, size),
            };
            (
                UnitMap::with_op(
                    codes.clone(),
                    blocks,
                    (stride, be / 2),
                    codes_op(l.nibbles, size),
                ),
                UnitMap::with_op(codes, blocks, (stride, out), op),
                *format,
            )
        }
    };
    let kind = match format {
        ScaleFormat::E8M0 => WeightKind::Lut4E8m0,
        ScaleFormat::F16 | ScaleFormat::F32 => WeightKind::Lut4F32,
    };
    let round = match l.round_to {
        DType::F32 => ROUND_NONE,
        DType::BF16 => ROUND_BF16,
        DType::F16 => ROUND_F16,
    };
    PackPlan {
        layout: WeightLayout {
            kind,
            block: be,
            round,
            table: l.table,
            ..base
        },
        data,
        scales: Some(scales),
        raw: None,
    }
}

/// Low-nibble-first codes are the source bytes themselves: a plain copy, which an upload of HF MXFP4
/// then takes straight from the file mapping.
fn codes_op(order: NibbleOrder, skip: usize) -> UnitOp {
    match (order, skip) {
        (NibbleOrder::LowFirst, 0) => UnitOp::Copy,
        _ => UnitOp::Codes { skip, order },
    }
}

#[cfg(test)]
#[path = "repack_reference.rs"]
mod reference;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{random_tensor, Rng, TestFormat};
    use crate::weights::pack;
    use gptoss_formats::tensor::E2M1_VALUES;

    /// A 4-bit tensor of random codes and scales in any of the layouts readers produce.
    fn lut4(
        rng: &mut Rng,
        shape: [usize; 2],
        nibbles: NibbleOrder,
        inline: Option<ScaleFormat>,
    ) -> QuantTensor {
        let (n, be) = (shape[0] * shape[1], 32);
        let blocks = n / be;
        let mut bytes =
            |len: usize| -> Vec<u8> { (0..len).map(|_| (rng.next_u64() >> 56) as u8).collect() };
        // f16/f32 scales from small exponents, so no NaN whose payload could differ between paths.
        let scale = |format: ScaleFormat, b: u8| -> Vec<u8> {
            match format {
                ScaleFormat::E8M0 => vec![120 + b % 8],
                ScaleFormat::F16 => half::f16::from_f32(0.25 + f32::from(b) / 256.0)
                    .to_le_bytes()
                    .to_vec(),
                ScaleFormat::F32 => (0.5 + f32::from(b) / 128.0).to_le_bytes().to_vec(),
            }
        };
        let (scales, data) = match inline {
            Some(format) => {
                let mut data = Vec::new();
                for s in bytes(blocks) {
                    data.extend(scale(format, s));
                    data.extend(bytes(be / 2));
                }
                (Lut4Scales::Inline { format }, data)
            }
            None => {
                let format = ScaleFormat::F16;
                let s: Vec<u8> = bytes(blocks)
                    .into_iter()
                    .flat_map(|b| scale(format, b))
                    .collect();
                (
                    Lut4Scales::Separate {
                        format,
                        data: Storage::owned(s),
                    },
                    bytes(n / 2),
                )
            }
        };
        QuantTensor {
            shape: shape.to_vec(),
            format: TensorFormat::Lut4(Lut4 {
                table: E2M1_VALUES,
                block_elems: be,
                nibbles,
                scales,
                round_to: DType::F32,
            }),
            data: Storage::owned(data),
        }
    }

    /// Every tensor layout the packer takes, including lazy sources as the GGUF and HF readers make them.
    fn cases() -> Vec<(String, QuantTensor)> {
        let mut rng = Rng(11);
        let mut out = Vec::new();
        for format in TestFormat::ALL {
            for (rows, cols) in [(3, 64), (5, 96), (2, 45), (7, 128), (1, 8)] {
                if cols % 32 != 0 && !matches!(format, TestFormat::Dense(_)) {
                    continue;
                }
                out.push((
                    format!("{format:?} {rows}x{cols}"),
                    random_tensor(&mut rng, format, rows, cols, 0.5),
                ));
            }
        }
        for nibbles in [
            NibbleOrder::LowFirst,
            NibbleOrder::HighFirst,
            NibbleOrder::SplitHalves,
        ] {
            for inline in [
                None,
                Some(ScaleFormat::E8M0),
                Some(ScaleFormat::F16),
                Some(ScaleFormat::F32),
            ] {
                out.push((
                    format!("{nibbles:?} {inline:?}"),
                    lut4(&mut rng, [6, 96], nibbles, inline),
                ));
            }
        }
        // GGUF gate_up: gate and up rows of ggml MXFP4 interleaved lazily (rows of 3 blocks of 17 bytes).
        let (gate, up) = (
            random_tensor(&mut rng, TestFormat::GgmlMxfp4, 5, 96, 1.0),
            random_tensor(&mut rng, TestFormat::GgmlMxfp4, 5, 96, 1.0),
        );
        let woven = Storage::interleaved(gate.data.clone(), up.data.clone(), 3 * 17).unwrap();
        out.push((
            "lazy interleave".into(),
            QuantTensor {
                shape: vec![10, 96],
                format: gate.format.clone(),
                data: woven.clone(),
            },
        ));
        // A window of a lazy storage (an expert of a lazily built stack).
        out.push((
            "lazy window".into(),
            QuantTensor {
                shape: vec![4, 96],
                format: gate.format.clone(),
                data: woven.slice(2 * 51, 4 * 51),
            },
        ));
        // HF dense experts `[in, out]` read as `[out, in]`: a lazy transpose, built once by the plan.
        let dense = random_tensor(&mut rng, TestFormat::Dense(DType::BF16), 12, 20, 1.0);
        let t = Storage::transposed(dense.data.clone(), 12, 20, 2).unwrap();
        out.push((
            "lazy transpose".into(),
            QuantTensor {
                shape: vec![20, 12],
                format: dense.format.clone(),
                data: t,
            },
        ));
        out
    }

    fn maps<'a>(p: &'a PackPlan<'a>) -> Vec<&'a UnitMap<'a>> {
        std::iter::once(&p.data).chain(p.scales.as_ref()).collect()
    }

    #[test]
    fn bytes_identical_to_the_previous_packer() {
        for (name, t) in cases() {
            let (data, scales) = reference::pack_bytes(&t.materialized());
            let p = pack(&t).unwrap();
            assert_eq!(&*p.data, &data[..], "{name}: data");
            assert_eq!(&*p.scales, &scales[..], "{name}: scales");
        }
    }

    #[test]
    fn parallel_and_piecewise_fills_equal_the_serial_fill() {
        for (name, t) in cases() {
            let plan = PackPlan::new(&t).unwrap();
            for m in maps(&plan) {
                let mut serial = vec![0u8; m.len_bytes()];
                m.fill(0, &mut serial).unwrap();
                let unit = m.unit_bytes();
                for task in [1, 3 * unit + 1, TASK_BYTES] {
                    let mut par = vec![0xAAu8; m.len_bytes()];
                    m.fill_par(0, &mut par, task).unwrap();
                    assert_eq!(par, serial, "{name}: tasks of {task} bytes");
                }
                // As the stager does: slots of a few units, each filled on its own.
                for slot_units in [1, 2, 5] {
                    let mut pieces = vec![0x55u8; m.len_bytes()];
                    for (i, piece) in pieces.chunks_mut(slot_units * unit).enumerate() {
                        m.fill_par(i * slot_units, piece, unit).unwrap();
                    }
                    assert_eq!(pieces, serial, "{name}: slots of {slot_units} units");
                }
            }
        }
    }

    #[test]
    fn split_halves_are_rewritten_low_nibble_first() {
        // Code j of a 32-block: j for j < 16 (low nibbles), 31 - j for j >= 16 (high nibbles).
        let src: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
        let mut out = [0u8; 16];
        low_first(NibbleOrder::SplitHalves, &src, &mut out);
        let code = |j: u8| if j < 16 { j } else { 31 - j };
        let want: Vec<u8> = (0..16u8)
            .map(|i| code(2 * i) | (code(2 * i + 1) << 4))
            .collect();
        assert_eq!(out.to_vec(), want);
        assert_eq!(out[0], 0x10);
        assert_eq!(out[8], 0xEF);
    }

    #[test]
    fn ranges_outside_the_array_are_errors() {
        let t = random_tensor(&mut Rng(2), TestFormat::Q8_0, 2, 64, 1.0);
        let plan = PackPlan::new(&t).unwrap();
        let m = &plan.data;
        assert_eq!((m.units(), m.unit_bytes()), (4, 32));
        let mut buf = vec![0u8; 64];
        assert!(m.fill(3, &mut buf).is_err(), "units 3..5 of 4");
        assert!(
            m.fill_par(0, &mut buf[..33], 32).is_err(),
            "not whole units"
        );
        m.fill(2, &mut buf).unwrap();
        assert_eq!(&buf[..32], &t.data.bytes()[2 * 34 + 2..3 * 34]);
    }

    #[test]
    fn plans_report_layouts_and_sizes() {
        let t = random_tensor(&mut Rng(3), TestFormat::GgmlMxfp4, 4, 64, 1.0);
        let p = PackPlan::new(&t).unwrap();
        assert_eq!(p.layout.kind, WeightKind::Lut4E8m0);
        assert_eq!(
            (p.data.len_bytes(), p.scales.as_ref().unwrap().len_bytes()),
            (128, 8)
        );
        assert_eq!(
            p.size_bytes() as u64,
            gptoss_engine::memory::tensor_bytes(&t)
        );
        let wider = random_tensor(&mut Rng(3), TestFormat::GgmlMxfp4, 4, 96, 1.0);
        assert!(!p.same_layout(&PackPlan::new(&wider).unwrap()));
        assert!(p.same_layout(&PackPlan::new(&t).unwrap()));
        let bad = QuantTensor {
            data: Storage::owned(vec![0; 10]),
            ..t
        };
        let e = PackPlan::new(&bad).unwrap_err().to_string();
        assert!(e.contains("needs 136 bytes, found 10"), "{e}");
    }
}
