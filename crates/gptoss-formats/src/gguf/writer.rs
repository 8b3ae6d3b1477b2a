//! GGUF v3 writer in llama.cpp's gpt-oss layout (spec §3.2–3.4), for `gptoss convert`: the
//! `gpt-oss.*` metadata, llama.cpp's tensor names, experts stacked `[E, rows, cols]` with gate and up
//! split from the canonical interleaved rows, MXFP4 experts repacked byte-for-byte into
//! `block_mxfp4`, 1-D tensors and the router in F32, other 2-D weights in the chosen type. Tensors
//! are encoded and written one at a time into `<dest>.tmp`, renamed to `dest` at the end.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::tensor::QuantTensor;
use crate::weights::{Expert, ModelWeights};
use crate::{Checkpoint, EmbeddedVocab};

use super::config::config_metadata;
use super::encode::{is_mxfp4, RowEncoder};
use super::ggml_types::GgmlType;
use super::names::{
    gguf_expert_name, gguf_layer_name, ExpertProj, Part, OUTPUT, OUTPUT_NORM, TOKEN_EMBD,
};
use super::vocab::{vocab_from_hf_dir, vocab_metadata};
use super::write::{PlannedTensor, StreamWriter};

/// The type of 2-D weights other than MXFP4 experts and the router (llama.cpp's `--outtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutType {
    /// Exact.
    F32,
    /// IEEE half (round to nearest even).
    F16,
    /// bfloat16 (round to nearest even).
    BF16,
    /// ggml Q8_0 quantized as ggml's reference quantizer does (llama.cpp's default for gpt-oss).
    Q8_0,
    /// llama-quantize's `MXFP4_MOE` mix: dense weights Q8_0 as [`OutType::Q8_0`], and a file with
    /// MXFP4 experts typed `LLAMA_FTYPE_MOSTLY_MXFP4_MOE` (38) instead of `MOSTLY_Q8_0` (7).
    Mxfp4Moe,
}

impl OutType {
    fn ggml(self) -> GgmlType {
        match self {
            OutType::F32 => GgmlType::F32,
            OutType::F16 => GgmlType::F16,
            OutType::BF16 => GgmlType::BF16,
            OutType::Q8_0 | OutType::Mxfp4Moe => GgmlType::Q8_0,
        }
    }

    /// llama.cpp's `general.file_type` for a file of this type without MXFP4 experts.
    fn file_type(self) -> u32 {
        match self {
            OutType::F32 => 0,
            OutType::F16 => 1,
            OutType::Q8_0 | OutType::Mxfp4Moe => 7,
            OutType::BF16 => 32,
        }
    }
}

/// `general.file_type` of a file whose experts are MXFP4 (`LLAMA_FTYPE_MOSTLY_MXFP4_MOE`).
const FILE_TYPE_MXFP4_MOE: u32 = 38;

/// What was written.
#[derive(Debug)]
pub struct WriteReport {
    /// The file.
    pub path: PathBuf,
    /// Each tensor: name, type, row-major shape.
    pub tensors: Vec<(String, GgmlType, Vec<usize>)>,
    /// Fallbacks and other decisions worth showing.
    pub notes: Vec<String>,
}

/// Where one GGUF tensor's bytes come from.
enum Source<'a> {
    /// All rows of a canonical 2-D tensor.
    Rows(&'a QuantTensor),
    /// An f32 vector.
    Vector(&'a [f32]),
    /// Stacked expert weight rows of one layer.
    Experts(&'a [Expert], ExpertProj),
    /// Stacked expert biases of one layer.
    ExpertBias(&'a [Expert], ExpertProj),
}

impl Source<'_> {
    fn describe(&self) -> String {
        match self {
            Source::Rows(t) => t.format.describe(),
            Source::Vector(_) | Source::ExpertBias(..) => "f32".into(),
            Source::Experts(experts, proj) => experts
                .first()
                .map_or_else(String::new, |x| pick(x, *proj).format.describe()),
        }
    }
}

struct Job<'a> {
    plan: PlannedTensor,
    source: Source<'a>,
}

/// The type of the expert weight tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertType {
    /// As llama.cpp's converter: MXFP4 experts repacked, dense experts in the dense type.
    AsConverter,
    /// MXFP4: repacked byte-for-byte from MXFP4 sources, quantized from others (`quant::mxfp4`).
    Mxfp4,
    /// A dense or Q8_0 type (MXFP4 sources are decoded first).
    Other(OutType),
}

/// Called after each tensor is written with its name and bytes; an error aborts the write.
pub type Progress<'a> = &'a mut dyn FnMut(&str, usize) -> Result<()>;

/// How to write a model.
pub struct WriteOptions<'a> {
    /// Type of 2-D weights other than the experts and the router.
    pub dense: OutType,
    /// Type of the expert weights.
    pub experts: ExpertType,
    /// Progress (and cancellation) hook.
    pub progress: Option<Progress<'a>>,
}

/// One tensor the writer will write, for `--dry-run`.
#[derive(Clone, Debug)]
pub struct PlanEntry {
    /// GGUF name.
    pub name: String,
    /// The canonical source format (`describe()` of the source tensor; `f32` for vectors).
    pub source: String,
    /// Output type.
    pub ty: GgmlType,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Bytes in the file.
    pub bytes: usize,
}

/// What [`write_model_with`] would write, tensor by tensor, plus its notes (fallbacks).
pub fn plan_model(
    weights: &ModelWeights,
    dense: OutType,
    experts: ExpertType,
) -> Result<(Vec<PlanEntry>, Vec<String>)> {
    let mut notes = Vec::new();
    let jobs = plan_jobs(weights, dense, experts, &mut notes)?;
    let entries = jobs
        .iter()
        .map(|j| PlanEntry {
            name: j.plan.name.clone(),
            source: j.source.describe(),
            ty: j.plan.ty,
            shape: j.plan.ne.iter().rev().map(|&n| n as usize).collect(),
            bytes: j.plan.size_bytes().unwrap_or(0),
        })
        .collect();
    Ok((entries, notes))
}

/// Writes `weights` (and `vocab`, if given) to `dest` as a llama.cpp gpt-oss GGUF, experts as
/// llama.cpp's converter writes them.
pub fn write_model(
    weights: &ModelWeights,
    vocab: Option<&EmbeddedVocab>,
    outtype: OutType,
    dest: &Path,
) -> Result<WriteReport> {
    let opts = WriteOptions {
        dense: outtype,
        experts: ExpertType::AsConverter,
        progress: None,
    };
    write_model_with(weights, vocab, opts, dest)
}

/// Writes `weights` (and `vocab`, if given) to `dest` as a llama.cpp gpt-oss GGUF.
pub fn write_model_with(
    weights: &ModelWeights,
    vocab: Option<&EmbeddedVocab>,
    mut opts: WriteOptions,
    dest: &Path,
) -> Result<WriteReport> {
    let mut notes = Vec::new();
    let outtype = opts.dense;
    let jobs = plan_jobs(weights, outtype, opts.experts, &mut notes)?;
    let any_mxfp4 = jobs.iter().any(|j| j.plan.ty == GgmlType::MXFP4);
    // As llama.cpp's converter: MOSTLY_MXFP4_MOE for float outtypes with MXFP4 experts, else the
    // outtype's own file type (its q8_0 gpt-oss files say MOSTLY_Q8_0); llama-quantize's MXFP4_MOE
    // mix says MOSTLY_MXFP4_MOE.
    let file_type = if any_mxfp4 && outtype != OutType::Q8_0 {
        FILE_TYPE_MXFP4_MOE
    } else {
        outtype.file_type()
    };
    let mut metadata = config_metadata(&weights.config, file_type, &mut notes)?;
    if let Some(v) = vocab {
        metadata.extend(vocab_metadata(v));
    }
    let plan: Vec<PlannedTensor> = jobs.iter().map(|j| j.plan.clone()).collect();
    let mut w = StreamWriter::create(dest, &metadata, plan)?;
    let mut enc = RowEncoder::default();
    for job in &jobs {
        let sink = Sink {
            w: &mut w,
            name: &job.plan.name,
            buf: Vec::new(),
        };
        encode_job(job, &mut enc, sink)?;
        if let Some(p) = opts.progress.as_mut() {
            p(&job.plan.name, job.plan.size_bytes().unwrap_or(0))?;
        }
    }
    let path = w.finish()?;
    let tensors = jobs
        .iter()
        .map(|j| {
            (
                j.plan.name.clone(),
                j.plan.ty,
                j.plan.ne.iter().rev().map(|&n| n as usize).collect(),
            )
        })
        .collect();
    Ok(WriteReport {
        path,
        tensors,
        notes,
    })
}

/// The vocabulary `gptoss convert` writes for a checkpoint: its embedded one, or else the one built
/// from the `tokenizer.json` beside it (as llama.cpp's converter does); `None` when it has neither.
pub fn checkpoint_vocab(ckpt: &Checkpoint) -> Result<Option<EmbeddedVocab>> {
    match (&ckpt.vocab, &ckpt.tokenizer_json) {
        (Some(v), _) => Ok(Some(v.clone())),
        (None, Some(tj)) => {
            let dir = tj.parent().unwrap_or(Path::new("."));
            vocab_from_hf_dir(dir, ckpt.weights.config.vocab_size).map(Some)
        }
        (None, None) => Ok(None),
    }
}

/// Writes a loaded checkpoint with the vocabulary of [`checkpoint_vocab`] (without one, none).
pub fn write_checkpoint(ckpt: &Checkpoint, outtype: OutType, dest: &Path) -> Result<WriteReport> {
    let vocab = checkpoint_vocab(ckpt)?;
    let mut report = write_model(&ckpt.weights, vocab.as_ref(), outtype, dest)?;
    if vocab.is_none() {
        report
            .notes
            .push("no vocabulary found: the GGUF has no tokenizer.ggml.* keys".into());
    }
    Ok(report)
}

/// `ty` if rows of `row_len` fit its blocks, else F16 as llama.cpp falls back (with a note).
fn fit(ty: GgmlType, row_len: usize, name: &str, notes: &mut Vec<String>) -> GgmlType {
    if ty.row_bytes(row_len).is_some() {
        return ty;
    }
    notes.push(format!(
        "{name}: rows of {row_len} are not whole {} blocks; written as F16",
        ty.name()
    ));
    GgmlType::F16
}

fn plan_jobs<'a>(
    w: &'a ModelWeights,
    outtype: OutType,
    experts: ExpertType,
    notes: &mut Vec<String>,
) -> Result<Vec<Job<'a>>> {
    let mut jobs = Vec::new();
    let dense = |jobs: &mut Vec<Job<'a>>,
                 name: String,
                 t: &'a QuantTensor,
                 ty: GgmlType,
                 notes: &mut Vec<String>| {
        let ty = fit(ty, t.row_len(), &name, notes);
        jobs.push(Job {
            plan: PlannedTensor::new(name, &t.shape, ty),
            source: Source::Rows(t),
        });
    };
    let vector = |jobs: &mut Vec<Job<'a>>, name: String, v: &'a [f32]| {
        jobs.push(Job {
            plan: PlannedTensor::new(name, &[v.len()], GgmlType::F32),
            source: Source::Vector(v),
        });
    };
    dense(
        &mut jobs,
        TOKEN_EMBD.into(),
        &w.embed,
        outtype.ggml(),
        notes,
    );
    for (l, layer) in w.layers.iter().enumerate() {
        let name = |canon: &str| gguf_layer_name(l, canon).unwrap_or_default();
        vector(&mut jobs, name("attn_norm"), &layer.attn_norm);
        for (what, lin) in [
            ("q", &layer.q),
            ("k", &layer.k),
            ("v", &layer.v),
            ("o", &layer.o),
        ] {
            dense(
                &mut jobs,
                name(&format!("{what}.weight")),
                &lin.weight,
                outtype.ggml(),
                notes,
            );
            if let Some(b) = &lin.bias {
                vector(&mut jobs, name(&format!("{what}.bias")), b);
            }
        }
        vector(&mut jobs, name("sinks"), &layer.sinks);
        vector(&mut jobs, name("mlp_norm"), &layer.mlp_norm);
        dense(
            &mut jobs,
            name("router.weight"),
            &layer.router.weight,
            GgmlType::F32,
            notes,
        );
        if let Some(b) = &layer.router.bias {
            vector(&mut jobs, name("router.bias"), b);
        }
        plan_experts(&mut jobs, l, &layer.experts, (outtype, experts), notes)?;
    }
    vector(&mut jobs, OUTPUT_NORM.into(), &w.norm);
    dense(&mut jobs, OUTPUT.into(), &w.lm_head, outtype.ggml(), notes);
    Ok(jobs)
}

fn plan_experts<'a>(
    jobs: &mut Vec<Job<'a>>,
    layer: usize,
    experts: &'a [Expert],
    (outtype, want): (OutType, ExpertType),
    notes: &mut Vec<String>,
) -> Result<()> {
    let Some(first) = experts.first() else {
        return Ok(());
    };
    let e = experts.len();
    let (gu, down) = (&first.gate_up.weight, &first.down.weight);
    if gu.shape.len() != 2 || gu.shape[0] % 2 != 0 || down.shape.len() != 2 {
        let msg = format!(
            "gate_up {:?} / down {:?} are not [2I, H] / [H, I]",
            gu.shape, down.shape
        );
        return Err(Error::tensor(
            "<gguf writer>",
            format!("layers.{layer}.experts"),
            msg,
        ));
    }
    let (i, h) = (gu.shape[0] / 2, gu.shape[1]);
    for (proj, shape) in [
        (ExpertProj::Gate, [e, i, h]),
        (ExpertProj::Up, [e, i, h]),
        (ExpertProj::Down, down_shape(e, down)),
    ] {
        let name = gguf_expert_name(layer, proj, Part::Weight);
        let all_mxfp4 = experts.iter().all(|x| is_mxfp4(pick(x, proj)));
        let ty = match want {
            ExpertType::AsConverter if all_mxfp4 => GgmlType::MXFP4,
            ExpertType::AsConverter => fit(outtype.ggml(), shape[2], &name, notes),
            ExpertType::Mxfp4 => fit(GgmlType::MXFP4, shape[2], &name, notes),
            ExpertType::Other(t) => fit(t.ggml(), shape[2], &name, notes),
        };
        jobs.push(Job {
            plan: PlannedTensor::new(name, &shape, ty),
            source: Source::Experts(experts, proj),
        });
        if experts.iter().all(|x| bias_of(x, proj).is_some()) {
            let rows = if proj == ExpertProj::Down {
                shape[1]
            } else {
                i
            };
            let name = gguf_expert_name(layer, proj, Part::Bias);
            let plan = PlannedTensor::new(name, &[e, rows], GgmlType::F32);
            jobs.push(Job {
                plan,
                source: Source::ExpertBias(experts, proj),
            });
        }
    }
    Ok(())
}

fn down_shape(e: usize, down: &QuantTensor) -> [usize; 3] {
    [e, down.shape[0], down.shape[1]]
}

fn pick(x: &Expert, proj: ExpertProj) -> &QuantTensor {
    if proj == ExpertProj::Down {
        &x.down.weight
    } else {
        &x.gate_up.weight
    }
}

fn bias_of(x: &Expert, proj: ExpertProj) -> Option<&Vec<f32>> {
    if proj == ExpertProj::Down {
        x.down.bias.as_ref()
    } else {
        x.gate_up.bias.as_ref()
    }
}

/// Canonical row of `proj`'s row `j`: even gate_up rows are gate, odd rows up (spec §1.3).
fn source_row(proj: ExpertProj, j: usize) -> usize {
    match proj {
        ExpertProj::Gate => 2 * j,
        ExpertProj::Up => 2 * j + 1,
        ExpertProj::GateUpFused | ExpertProj::Down => j,
    }
}

/// Bytes handed to the file per write while encoding one tensor: memory stays flat on big tensors
/// (the file's own buffer is 1 MiB too, so larger chunks would only add to the peak).
const FLUSH_BYTES: usize = 1 << 20;

/// The encoded bytes of the tensor being written, flushed to the file in chunks.
struct Sink<'w> {
    w: &'w mut StreamWriter,
    name: &'w str,
    buf: Vec<u8>,
}

impl Sink<'_> {
    fn flush_if_full(&mut self) -> Result<()> {
        if self.buf.len() >= FLUSH_BYTES {
            self.w.write_part(self.name, &self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        self.w.write_part(self.name, &self.buf)?;
        self.w.end_tensor(self.name)
    }
}

/// Encodes one planned tensor row by row into the file.
fn encode_job(job: &Job, enc: &mut RowEncoder, mut sink: Sink) -> Result<()> {
    let (name, ty) = (job.plan.name.as_str(), job.plan.ty);
    match &job.source {
        Source::Rows(t) => {
            // Lazy bytes (a transpose, an interleave) are built for this tensor only, then dropped.
            let t = t.materialized();
            for r in 0..t.n_rows() {
                enc.encode_row(&t, r, ty, name, &mut sink.buf)?;
                sink.flush_if_full()?;
            }
        }
        Source::Vector(v) => v
            .iter()
            .for_each(|x| sink.buf.extend_from_slice(&x.to_le_bytes())),
        Source::Experts(experts, proj) => {
            let rows = job.plan.ne.get(1).copied().unwrap_or(0) as usize;
            for x in experts.iter() {
                let t = pick(x, *proj).materialized();
                for j in 0..rows {
                    enc.encode_row(&t, source_row(*proj, j), ty, name, &mut sink.buf)?;
                    sink.flush_if_full()?;
                }
            }
        }
        Source::ExpertBias(experts, proj) => {
            let rows = job.plan.ne.first().copied().unwrap_or(0) as usize;
            for x in experts.iter() {
                let b = bias_of(x, *proj).map(Vec::as_slice).unwrap_or_default();
                for j in 0..rows {
                    let v = b.get(source_row(*proj, j)).ok_or_else(|| {
                        Error::tensor(
                            "<gguf writer>",
                            name,
                            format!("bias shorter than {rows} rows"),
                        )
                    })?;
                    sink.buf.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    sink.finish()
}
