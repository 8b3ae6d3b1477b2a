//! Recorded forward steps (CUDA graphs). Every launch of a step depends only on the step's token count,
//! logit rows and the attention key splits (which follow from its longest position), and every buffer it
//! touches is allocated once, so a recording of one step replays any later step of the same [`GraphKey`]
//! after its batch has been copied in: one launch instead of ~250. A shape is recorded the second time it
//! is seen (the first run loads its kernels and sizes scratch); a shape whose recording fails runs
//! unrecorded from then on.

use std::collections::{HashMap, HashSet};

use cudarc::driver::{sys, CudaGraph};
use gptoss_engine::backend::Recording;
use gptoss_formats::Window;

use crate::device::Device;
use crate::error::{CudaError, Result};
use crate::ops::attention::splits_for;
use crate::step::CudaStep;

/// Steps of more tokens than this are not recorded.
const MAX_ROWS: usize = 64;
/// Recordings kept at most (each holds a few hundred kernel nodes).
const MAX_GRAPHS: usize = 256;

/// What makes two steps' launches identical.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) struct GraphKey {
    rows: usize,
    logit_rows: usize,
    full_splits: usize,
    sliding_splits: usize,
}

impl GraphKey {
    fn of(step: &CudaStep, sms: usize) -> Self {
        let heads = (step.n_q_heads, step.n_kv_heads);
        GraphKey {
            rows: step.rows,
            logit_rows: step.logit_rows,
            full_splits: splits_for(step, Window::Full, heads, sms),
            sliding_splits: splits_for(step, Window::Sliding(step.window_tokens), heads, sms),
        }
    }
}

/// The recordings of one backend.
pub(crate) struct Graphs {
    enabled: bool,
    ready: HashMap<GraphKey, CudaGraph>,
    seen: HashSet<GraphKey>,
    refused: HashSet<GraphKey>,
    recording: Option<GraphKey>,
    replays: u64,
}

impl Graphs {
    pub(crate) fn new(enabled: bool) -> Self {
        Graphs {
            enabled,
            ready: HashMap::new(),
            seen: HashSet::new(),
            refused: HashSet::new(),
            recording: None,
            replays: 0,
        }
    }

    /// Recordings held and steps replayed so far.
    pub(crate) fn counts(&self) -> (usize, u64) {
        (self.ready.len(), self.replays)
    }

    /// Replays the recording of `step`'s shape, starts recording it, or does neither.
    pub(crate) fn begin(&mut self, dev: &Device, step: &CudaStep) -> Result<Recording> {
        // Only steps of one token per sequence (decode, batched decode) are recorded. A prefill chunk
        // recorded and replayed gave other tokens than the same chunk run unrecorded (gpu_prefix on the
        // H200, session 4: a repeated 70-token prompt, computed as chunks of 32, 32 and 6 tokens with
        // the 6-token chunk recorded, diverged at its third generated token); the cause is not found.
        if !self.enabled
            || step.rows > MAX_ROWS
            || step.rows != step.seqs
            || self.recording.is_some()
        {
            return Ok(Recording::Off);
        }
        let key = GraphKey::of(step, dev.caps.sm_count as usize);
        if let Some(graph) = self.ready.get(&key) {
            graph
                .launch()
                .map_err(|e| CudaError::driver("replaying a recorded step", e))?;
            self.replays += 1;
            return Ok(Recording::Replayed);
        }
        if self.refused.contains(&key) || self.seen.insert(key) || self.ready.len() >= MAX_GRAPHS {
            return Ok(Recording::Off);
        }
        dev.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(|e| CudaError::driver("starting to record a step", e))?;
        self.recording = Some(key);
        Ok(Recording::Recording)
    }

    /// Ends the recording and runs it; `false` when it is unusable (the ops must be issued again).
    pub(crate) fn finish(&mut self, dev: &Device, issued: bool) -> Result<bool> {
        let Some(key) = self.recording.take() else {
            return Ok(true);
        };
        let ended = dev.stream.end_capture(sys::CUgraphInstantiate_flags(0));
        match ended {
            Ok(Some(graph)) if issued => {
                graph
                    .launch()
                    .map_err(|e| CudaError::driver("running a recorded step", e))?;
                self.ready.insert(key, graph);
                Ok(true)
            }
            other => {
                if let Err(e) = other {
                    tracing::debug!(error = ?e, ?key, "recording a step failed; it runs unrecorded");
                }
                self.refused.insert(key);
                Ok(false)
            }
        }
    }

    /// Whether a recording is open (no allocation may happen then).
    pub(crate) fn recording(&self) -> bool {
        self.recording.is_some()
    }

    /// Forgets every recording (a buffer they use was reallocated).
    pub(crate) fn clear(&mut self) {
        self.ready.clear();
    }
}
