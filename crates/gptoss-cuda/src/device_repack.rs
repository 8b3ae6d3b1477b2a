//! Repacking on the device: a weight stored in a ggml block format (Q8_0; ggml MXFP4, Q4_0 and IQ4_NL,
//! whose 4-bit codes come in split halves with an inline scale) is uploaded as the file's raw blocks,
//! whole runs of them copied into the pinned staging buffers as HF MXFP4's bytes are (a parallel memcpy
//! from the mapping), then to a device scratch buffer, where `kernels/repack.cu` rewrites each chunk into
//! the layout of `weights.rs` while the next chunk is filled. A [`RawPlan`] says which source bytes make
//! each chunk and which output blocks the chunk becomes; `ops/repack.rs` queues the copies and kernels.

use gptoss_formats::tensor::{Q8_0_BLOCK, Q8_0_BLOCK_BYTES};
use gptoss_formats::{Lut4Scales, NibbleOrder, QuantTensor, ScaleFormat, Storage, TensorFormat};
use rayon::prelude::*;

use crate::error::{CudaError, Result};
use crate::repack::TASK_BYTES;

/// A ggml block format the device rewrites (`RF_*` in repack.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawFormat {
    /// Q8_0: an f16 scale and 32 int8 codes → the codes, and the scale's two bytes.
    Q8_0,
    /// ggml MXFP4: an E8M0 scale byte and 16 split-halves code bytes → 16 low-nibble-first bytes, the byte.
    Lut4E8m0,
    /// Q4_0, IQ4_NL: an f16 scale and 16 split-halves code bytes → 16 low-nibble-first bytes, an f32 scale.
    Lut4F16,
}

impl RawFormat {
    /// Source bytes of one block.
    pub fn block_bytes(self) -> usize {
        match self {
            RawFormat::Q8_0 => Q8_0_BLOCK_BYTES,
            RawFormat::Lut4E8m0 => 17,
            RawFormat::Lut4F16 => 18,
        }
    }

    /// Output code bytes of one block.
    pub fn code_bytes(self) -> usize {
        match self {
            RawFormat::Q8_0 => Q8_0_BLOCK,
            RawFormat::Lut4E8m0 | RawFormat::Lut4F16 => 16,
        }
    }

    /// Output scale bytes of one block.
    pub fn scale_bytes(self) -> usize {
        match self {
            RawFormat::Q8_0 => 2,
            RawFormat::Lut4E8m0 => 1,
            RawFormat::Lut4F16 => 4,
        }
    }

    /// The format of `f`, when the device rewrites it (blocks of 32 elements; 4-bit codes in split halves
    /// with an inline E8M0 or f16 scale).
    fn of(f: &TensorFormat) -> Option<Self> {
        match f {
            TensorFormat::Q8_0 => Some(RawFormat::Q8_0),
            TensorFormat::Lut4(l)
                if l.block_elems == 32 && l.nibbles == NibbleOrder::SplitHalves =>
            {
                match l.scales {
                    Lut4Scales::Inline {
                        format: ScaleFormat::E8M0,
                    } => Some(RawFormat::Lut4E8m0),
                    Lut4Scales::Inline {
                        format: ScaleFormat::F16,
                    } => Some(RawFormat::Lut4F16),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// Where a tensor's raw blocks are.
#[derive(Clone, Copy)]
enum RawSource<'a> {
    /// Every block, in output order.
    Whole(&'a [u8]),
    /// Output rows alternate: row `2j` is row `j` of `gate`, row `2j + 1` row `j` of `up` (the canonical
    /// gate_up the GGUF reader describes as a lazy interleave of two windows of the file).
    Interleaved { gate: &'a [u8], up: &'a [u8] },
}

/// A tensor uploaded as raw blocks and rewritten on the device.
#[derive(Clone, Copy)]
pub struct RawPlan<'a> {
    format: RawFormat,
    source: RawSource<'a>,
    /// Blocks of the tensor.
    blocks: usize,
    /// Blocks of one row (rows hold whole blocks: `QuantTensor::validate`).
    row_blocks: usize,
}

impl std::fmt::Debug for RawPlan<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match self.source {
            RawSource::Whole(_) => "whole",
            RawSource::Interleaved { .. } => "gate/up interleaved",
        };
        write!(
            f,
            "{:?} raw blocks ({source}): {} blocks, {} a row",
            self.format, self.blocks, self.row_blocks
        )
    }
}

/// One chunk of a raw upload: source bytes copied back to back into a staging buffer, and the output
/// blocks the kernel makes of them.
#[derive(Clone, Copy, Debug)]
pub struct RawChunk<'a> {
    /// The source bytes, in staging order (the second is empty unless the chunk is interleaved).
    pieces: [&'a [u8]; 2],
    /// The chunk's first output block.
    pub first_block: usize,
    /// Its output blocks.
    pub blocks: usize,
    /// Rows of gate (then as many of up) in the staged bytes, when output rows alternate gate and up;
    /// 0 when the staged blocks are in output order.
    pub half_rows: usize,
}

impl<'a> RawPlan<'a> {
    /// The raw plan of `t` (already validated against its shape), when its format is one the device
    /// rewrites and its bytes are a plain window (of a file or a buffer) or a row interleave of two.
    pub fn new(t: &'a QuantTensor) -> Option<Self> {
        let format = RawFormat::of(&t.format)?;
        let (rows, k) = (t.n_rows(), t.row_len());
        let row_blocks = k / 32;
        let blocks = rows * row_blocks;
        let (bb, row_bytes) = (format.block_bytes(), row_blocks * format.block_bytes());
        if blocks == 0 || row_blocks * 32 != k || t.data.len() != blocks * bb {
            return None;
        }
        let plain = |s: &'a Storage| (!s.is_lazy()).then(|| s.bytes());
        let source = match t.data.interleaved_parts() {
            None => RawSource::Whole(plain(&t.data)?),
            Some((gate, up, unit)) => {
                if unit != row_bytes || rows % 2 != 0 {
                    return None;
                }
                RawSource::Interleaved {
                    gate: plain(gate)?,
                    up: plain(up)?,
                }
            }
        };
        Some(RawPlan {
            format,
            source,
            blocks,
            row_blocks,
        })
    }

    /// The block format.
    pub fn format(&self) -> RawFormat {
        self.format
    }

    /// Blocks of one row.
    pub fn row_blocks(&self) -> usize {
        self.row_blocks
    }

    /// Output bytes of the codes array.
    pub fn codes_bytes(&self) -> usize {
        self.blocks * self.format.code_bytes()
    }

    /// Output bytes of the scales array.
    pub fn scales_bytes(&self) -> usize {
        self.blocks * self.format.scale_bytes()
    }

    /// The chunks, in output order, each of at most `max_bytes` source bytes: runs of whole blocks, or of
    /// whole (gate row, up row) pairs when rows are interleaved. `None` when one block or pair is larger.
    pub fn chunks(&self, max_bytes: usize) -> Option<Vec<RawChunk<'a>>> {
        let bb = self.format.block_bytes();
        match self.source {
            RawSource::Whole(src) => {
                let per = max_bytes / bb;
                if per == 0 {
                    return None;
                }
                let chunks = (0..self.blocks).step_by(per).map(|first| {
                    let n = per.min(self.blocks - first);
                    RawChunk {
                        pieces: [&src[first * bb..(first + n) * bb], &[]],
                        first_block: first,
                        blocks: n,
                        half_rows: 0,
                    }
                });
                Some(chunks.collect())
            }
            RawSource::Interleaved { gate, up } => {
                let row_bytes = self.row_blocks * bb;
                let (half, per) = (gate.len() / row_bytes, max_bytes / (2 * row_bytes));
                if per == 0 {
                    return None;
                }
                let chunks = (0..half).step_by(per).map(|first| {
                    let n = per.min(half - first);
                    let rows = first * row_bytes..(first + n) * row_bytes;
                    RawChunk {
                        pieces: [&gate[rows.clone()], &up[rows]],
                        first_block: 2 * first * self.row_blocks,
                        blocks: 2 * n * self.row_blocks,
                        half_rows: n,
                    }
                });
                Some(chunks.collect())
            }
        }
    }
}

impl RawChunk<'_> {
    /// Source bytes of the chunk.
    pub fn src_bytes(&self) -> usize {
        self.pieces[0].len() + self.pieces[1].len()
    }

    /// Copies the chunk's source bytes back to back into `out` (exactly [`RawChunk::src_bytes`] long),
    /// in parallel tasks of [`TASK_BYTES`].
    pub fn fill(&self, out: &mut [u8]) -> Result<()> {
        if out.len() != self.src_bytes() {
            return Err(CudaError::Unsupported(format!(
                "a raw chunk of {} bytes staged into {}",
                self.src_bytes(),
                out.len()
            )));
        }
        let (a, b) = out.split_at_mut(self.pieces[0].len());
        let copy = |dst: &mut [u8], src: &[u8]| {
            dst.par_chunks_mut(TASK_BYTES)
                .zip(src.par_chunks(TASK_BYTES))
                .for_each(|(d, s)| d.copy_from_slice(s));
        };
        rayon::join(|| copy(a, self.pieces[0]), || copy(b, self.pieces[1]));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repack::PackPlan;
    use crate::testing::{random_bytes_tensor, Rng, TestFormat};
    use crate::weights::pack;

    /// The host mirror of `repack_impl` in repack.cu: the chunk's staged bytes `src` → its output blocks,
    /// written into the whole arrays `codes` and `scales`, each written byte counted in `marks`.
    fn emulate(format: RawFormat, c: &RawChunk<'_>, src: &[u8], out: &mut Output) {
        let (bb, cb, sb) = (
            format.block_bytes(),
            format.code_bytes(),
            format.scale_bytes(),
        );
        let row_blocks = out.row_blocks;
        for o in 0..c.blocks {
            let s = if c.half_rows == 0 {
                o
            } else {
                let (r, col) = (o / row_blocks, o % row_blocks);
                let sr = if r % 2 == 1 {
                    c.half_rows + r / 2
                } else {
                    r / 2
                };
                sr * row_blocks + col
            };
            let b = &src[s * bb..(s + 1) * bb];
            let g = c.first_block + o;
            let (codes, scale): (Vec<u8>, Vec<u8>) = match format {
                RawFormat::Q8_0 => (b[2..].to_vec(), b[..2].to_vec()),
                RawFormat::Lut4E8m0 | RawFormat::Lut4F16 => {
                    let skip = bb - 16;
                    let mut codes = vec![0u8; 16];
                    for i in 0..8 {
                        let (x, y) = (b[skip + 2 * i], b[skip + 2 * i + 1]);
                        codes[i] = (x & 0x0F) | (y << 4);
                        codes[8 + i] = (x >> 4) | (y & 0xF0);
                    }
                    let scale = if format == RawFormat::Lut4E8m0 {
                        vec![b[0]]
                    } else {
                        half::f16::from_le_bytes([b[0], b[1]])
                            .to_f32()
                            .to_le_bytes()
                            .to_vec()
                    };
                    (codes, scale)
                }
            };
            out.codes[g * cb..(g + 1) * cb].copy_from_slice(&codes);
            out.scales[g * sb..(g + 1) * sb].copy_from_slice(&scale);
            out.code_marks[g * cb..(g + 1) * cb]
                .iter_mut()
                .for_each(|m| *m += 1);
            out.scale_marks[g * sb..(g + 1) * sb]
                .iter_mut()
                .for_each(|m| *m += 1);
        }
    }

    struct Output {
        row_blocks: usize,
        codes: Vec<u8>,
        scales: Vec<u8>,
        code_marks: Vec<u8>,
        scale_marks: Vec<u8>,
    }

    /// Uploads `t` as the device path does, with staging buffers of `slot_bytes`, through the host mirror
    /// of the kernel; `None` when a chunk does not fit. Checks every output byte is written exactly once.
    fn raw_upload(t: &QuantTensor, slot_bytes: usize) -> Option<(Vec<u8>, Vec<u8>, usize)> {
        let raw = RawPlan::new(t).expect("a raw plan");
        let chunks = raw.chunks(slot_bytes)?;
        let mut out = Output {
            row_blocks: raw.row_blocks(),
            codes: vec![0xA5; raw.codes_bytes()],
            scales: vec![0x5A; raw.scales_bytes()],
            code_marks: vec![0; raw.codes_bytes()],
            scale_marks: vec![0; raw.scales_bytes()],
        };
        let mut staged = vec![0u8; slot_bytes];
        let mut next_block = 0;
        for c in &chunks {
            assert!(c.src_bytes() <= slot_bytes && c.blocks > 0);
            assert_eq!(c.first_block, next_block, "chunks follow each other");
            assert_eq!(c.src_bytes(), c.blocks * raw.format().block_bytes());
            next_block += c.blocks;
            let buf = &mut staged[..c.src_bytes()];
            buf.fill(0xCC);
            c.fill(buf).unwrap();
            emulate(raw.format(), c, buf, &mut out);
        }
        assert!(out.code_marks.iter().all(|&m| m == 1), "codes written once");
        assert!(
            out.scale_marks.iter().all(|&m| m == 1),
            "scales written once"
        );
        Some((out.codes, out.scales, chunks.len()))
    }

    /// A `[2 * half, cols]` gate_up of `format` as the GGUF reader makes it: a lazy interleave of two
    /// windows (gate rows, up rows) of one stored stack.
    fn interleaved(rng: &mut Rng, format: TestFormat, half: usize, cols: usize) -> QuantTensor {
        let stack = random_bytes_tensor(rng, format, 2 * half, cols);
        let (s, n) = (&stack.data, stack.data.len() / 2);
        let data = Storage::interleaved(s.slice(0, n), s.slice(n, n), n / half).unwrap();
        QuantTensor {
            shape: vec![2 * half, cols],
            format: stack.format.clone(),
            data,
        }
    }

    const FORMATS: [TestFormat; 4] = [
        TestFormat::Q8_0,
        TestFormat::GgmlMxfp4,
        TestFormat::Q4_0,
        TestFormat::Iq4Nl,
    ];

    #[test]
    fn chunked_raw_uploads_equal_the_host_packer() {
        let mut rng = Rng(31);
        for format in FORMATS {
            let mut cases: Vec<(String, QuantTensor)> = Vec::new();
            for (rows, cols) in [(1, 32), (7, 96), (33, 2880 / 10), (5, 2880), (13, 64)] {
                let t = random_bytes_tensor(&mut rng, format, rows, cols);
                cases.push((format!("{rows}x{cols}"), t));
            }
            for (half, cols) in [(1, 32), (7, 96), (3, 2880)] {
                let t = interleaved(&mut rng, format, half, cols);
                cases.push((format!("gate_up {half}+{half}x{cols}"), t));
            }
            for (name, t) in &cases {
                let want = pack(t).unwrap();
                let plan = PackPlan::new(t).unwrap();
                let raw = plan.raw.expect("a raw plan");
                assert_eq!(
                    (raw.codes_bytes(), raw.scales_bytes()),
                    (want.data.len(), want.scales.len()),
                    "{format:?} {name}: sizes"
                );
                let bb = raw.format().block_bytes();
                let row = raw.row_blocks() * bb;
                // One block (or pair of rows), a little more, an odd size, the whole tensor and more.
                let mut sizes = vec![bb, 2 * row, 2 * row + bb - 1, 3 * bb + 1, 1000, 32 << 20];
                sizes.push(t.data.len());
                let mut fitted = 0;
                for slot in sizes {
                    let Some((codes, scales, n)) = raw_upload(t, slot) else {
                        // Only an interleaved tensor whose row pair exceeds the buffer is refused.
                        assert!(slot < 2 * row && t.data.is_lazy(), "{name}: {slot}");
                        continue;
                    };
                    fitted += 1;
                    let what = format!("{format:?} {name}, slots of {slot} ({n} chunks)");
                    assert_eq!(codes, *want.data, "{what}: codes");
                    assert_eq!(scales, *want.scales, "{what}: scales");
                }
                assert!(fitted >= 3, "{format:?} {name}");
            }
        }
    }

    #[test]
    fn chunks_split_at_blocks_and_row_pairs() {
        let mut rng = Rng(5);
        // 5 rows of 3 Q8_0 blocks (102 bytes a row), in buffers of 250 bytes: 7, 7 and 1 blocks.
        let t = random_bytes_tensor(&mut rng, TestFormat::Q8_0, 5, 96);
        let raw = RawPlan::new(&t).unwrap();
        let c = raw.chunks(250).unwrap();
        let spans: Vec<_> = c.iter().map(|c| (c.first_block, c.blocks)).collect();
        assert_eq!(spans, [(0, 7), (7, 7), (14, 1)]);
        assert_eq!(c[1].pieces[0], &t.data.bytes()[7 * 34..14 * 34]);
        // gate_up of 2 × 4 rows of 3 ggml MXFP4 blocks (51 bytes a row): pairs of rows, 2 a buffer of 250.
        let g = interleaved(&mut rng, TestFormat::GgmlMxfp4, 4, 96);
        let raw = RawPlan::new(&g).unwrap();
        let c = raw.chunks(250).unwrap();
        let spans: Vec<_> = c
            .iter()
            .map(|c| (c.first_block, c.blocks, c.half_rows))
            .collect();
        assert_eq!(spans, [(0, 12, 2), (12, 12, 2)]);
        let (gate, up, _) = g.data.interleaved_parts().unwrap();
        assert_eq!(
            c[1].pieces,
            [&gate.bytes()[102..204], &up.bytes()[102..204]]
        );
        assert!(raw.chunks(101).is_none(), "a pair of rows needs 102 bytes");
        assert_eq!(raw.chunks(102).unwrap().len(), 4);
    }

    #[test]
    fn only_plain_or_interleaved_ggml_blocks_go_raw() {
        let mut rng = Rng(9);
        for format in TestFormat::ALL {
            let t = random_bytes_tensor(&mut rng, format, 4, 64);
            let raw = RawPlan::new(&t).map(|r| r.format());
            let want = match format {
                TestFormat::Q8_0 => Some(RawFormat::Q8_0),
                TestFormat::GgmlMxfp4 => Some(RawFormat::Lut4E8m0),
                TestFormat::Q4_0 | TestFormat::Iq4Nl => Some(RawFormat::Lut4F16),
                _ => None,
            };
            assert_eq!(raw, want, "{format:?}");
        }
        // A window of a lazy interleave (not a whole gate_up) stays on the host path.
        let g = interleaved(&mut rng, TestFormat::GgmlMxfp4, 4, 96);
        let w = QuantTensor {
            shape: vec![2, 96],
            format: g.format.clone(),
            data: g.data.slice(51, 102),
        };
        assert!(RawPlan::new(&w).is_none());
        // An interleave of units other than rows too.
        let t = random_bytes_tensor(&mut rng, TestFormat::Q8_0, 4, 64);
        let n = t.data.len() / 2;
        let odd = QuantTensor {
            data: Storage::interleaved(t.data.slice(0, n), t.data.slice(n, n), 34).unwrap(),
            ..t
        };
        assert!(RawPlan::new(&odd).is_none());
    }
}
