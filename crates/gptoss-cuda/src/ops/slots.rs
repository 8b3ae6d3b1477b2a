//! Expert slots for the engine's hot-expert cache (`gptoss-engine` `expert_cache.rs`): a [`CudaExperts`]
//! of `S` experts allocated empty in one layout, and one expert's packed weights and biases copied into a
//! slot in place, through the pinned staging buffers, after the ops already queued on the stream. An expert
//! stored in a ggml block format (GGUF MXFP4) goes up as its raw blocks and is rewritten into the slot by
//! the device repack (`ops/repack.rs`), as the model's upload does; anything else is packed on the host while
//! the staging buffers fill. The MoE kernels read a slot set exactly as they read a layer's experts.

use std::sync::Arc;

use cudarc::driver::CudaStream;
use gptoss_formats::{Expert, Linear};

use crate::device::Device;
use crate::error::{CudaError, Result};
use crate::ops::moe::{experts_error, CudaExperts};
use crate::ops::repack::{self, RawTarget};
use crate::ops::DevWeight;
use crate::staging::Stager;
use crate::vram::{DevBuf, Meter};
use crate::weights::PackPlan;

/// `slots` experts of `like`'s layout, zeroed (each is filled by [`upload_slot`] before it is routed to).
pub fn alloc_slots(
    stream: &Arc<CudaStream>,
    meter: &Arc<Meter>,
    like: &Expert,
    slots: usize,
) -> Result<CudaExperts> {
    let weight = |l: &Linear, what: &str| -> Result<DevWeight> {
        let p = PackPlan::new(&l.weight)?;
        let scale_bytes = p.scales.as_ref().map(|s| s.len_bytes());
        let l = p.layout;
        Ok(DevWeight {
            kind: l.kind,
            rows: l.rows,
            k: l.k,
            ld: l.ld,
            block: l.block,
            round: l.round,
            table: l.table,
            data: DevBuf::zeros(stream, meter, slots * p.data.len_bytes(), what)?,
            scales: scale_bytes
                .map(|b| DevBuf::zeros(stream, meter, slots * b, what))
                .transpose()?,
        })
    };
    let bias = |l: &Linear| -> Result<Option<DevBuf<f32>>> {
        l.bias
            .as_ref()
            .map(|b| DevBuf::zeros(stream, meter, slots * b.len(), "expert slot biases"))
            .transpose()
    };
    Ok(CudaExperts {
        gate_up: weight(&like.gate_up, "expert slots (gate_up)")?,
        down: weight(&like.down, "expert slots (down)")?,
        gate_up_bias: bias(&like.gate_up)?,
        down_bias: bias(&like.down)?,
        n_experts: slots,
    })
}

/// Copies `expert` into slot `slot` of `experts` (packed as the slots are, or an error naming both
/// layouts). The host tensors keep their pages: the CPU runs this expert again once it is evicted.
pub fn upload_slot(
    dev: &Device,
    stager: &mut Stager,
    experts: &mut CudaExperts,
    slot: usize,
    expert: &Expert,
) -> Result<()> {
    if slot >= experts.n_experts {
        return Err(experts_error(format!(
            "slot {slot} of {} expert slots",
            experts.n_experts
        )));
    }
    write_weight(dev, stager, &mut experts.gate_up, slot, &expert.gate_up)?;
    write_weight(dev, stager, &mut experts.down, slot, &expert.down)?;
    let stream = &dev.stream;
    let gate_up_rows = experts.gate_up.rows;
    let down_rows = experts.down.rows;
    write_bias(
        stream,
        experts.gate_up_bias.as_mut(),
        (slot, gate_up_rows),
        &expert.gate_up,
    )?;
    write_bias(
        stream,
        experts.down_bias.as_mut(),
        (slot, down_rows),
        &expert.down,
    )
}

fn write_weight(
    dev: &Device,
    stager: &mut Stager,
    w: &mut DevWeight,
    slot: usize,
    src: &Linear,
) -> Result<()> {
    let p = PackPlan::new(&src.weight)?;
    let l = &p.layout;
    let data_bytes = p.data.len_bytes();
    let scale_bytes = p.scales.as_ref().map(|s| s.len_bytes());
    let same = l.kind == w.kind
        && (l.rows, l.k, l.ld, l.block, l.round) == (w.rows, w.k, w.ld, w.block, w.round)
        && l.table == w.table
        && w.data.len().is_multiple_of(data_bytes.max(1))
        && w.data.len() / data_bytes.max(1) > slot
        && scale_bytes.is_some() == w.scales.is_some();
    if !same {
        return Err(experts_error(format!(
            "an expert stored as {:?} [{}, {}] into slots of {:?} [{}, {}]",
            l.kind, l.rows, l.k, w.kind, w.rows, w.k
        )));
    }
    if let Some(raw) = &p.raw {
        let target = RawTarget {
            data: &w.data,
            data_at: slot * data_bytes,
            scales: w.scales.as_ref(),
            scales_at: slot * scale_bytes.unwrap_or(0),
        };
        if repack::upload_raw(dev, stager, raw, target)? {
            return Ok(());
        }
    }
    let stream = &dev.stream;
    stager.copy(stream, &p.data, &mut w.data.slice, slot * data_bytes)?;
    if let (Some(map), Some(buf), Some(b)) = (&p.scales, w.scales.as_mut(), scale_bytes) {
        stager.copy(stream, map, &mut buf.slice, slot * b)?;
    }
    Ok(())
}

fn write_bias(
    stream: &Arc<CudaStream>,
    dst: Option<&mut DevBuf<f32>>,
    (slot, rows): (usize, usize),
    src: &Linear,
) -> Result<()> {
    let range = slot * rows..(slot + 1) * rows;
    match (dst, src.bias.as_deref()) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(experts_error(
            "an expert with biases into slots made without them".into(),
        )),
        (Some(buf), bias) if range.end <= buf.len() => {
            let zeros = vec![0.0; rows];
            let values = bias.unwrap_or(&zeros);
            if values.len() != rows {
                return Err(experts_error(format!(
                    "a bias of {} values for {rows} rows",
                    values.len()
                )));
            }
            let mut view = buf.slice.slice_mut(range);
            stream
                .memcpy_htod(values, &mut view)
                .map_err(|e| CudaError::driver("copying an expert's biases into a slot", e))
        }
        (Some(buf), _) => Err(experts_error(format!(
            "bias rows {range:?} of a slot buffer of {}",
            buf.len()
        ))),
    }
}
