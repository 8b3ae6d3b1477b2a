//! Per-layer activation dumps for chosen token rows of one step (`gptoss logits --dump-layers`): every
//! intermediate of the forward pass under its canonical name (`attn_norm`, `q`, `attn_out`,
//! `router_logits`, `experts`, `moe_out`, `layer_out`, ...), read back after each op, so that two backends
//! can be diffed node by node. Tracing reads the device after every op; it is for debugging, never for speed.

use crate::backend::Backend;
use crate::error::{Error, Result};

/// Every node a traced step records, in the order a layer computes them (`embed` first and `norm` last
/// lie outside the layers).
pub const TRACE_NODES: &[&str] = &[
    "embed",
    "attn_norm",
    "q",
    "k",
    "v",
    "q_rope",
    "k_rope",
    "attn_out",
    "attn_proj",
    "attn_resid",
    "mlp_norm",
    "router_logits",
    "experts",
    "expert_weights",
    "moe_out",
    "layer_out",
    "norm",
];

/// What a traced step records: token rows of the step, and which nodes (empty: all of [`TRACE_NODES`]).
#[derive(Clone, Copy, Debug)]
pub struct TraceSpec<'a> {
    /// Indices into the step's tokens.
    pub rows: &'a [u32],
    /// Node names to keep.
    pub nodes: &'a [&'a str],
}

/// One traced intermediate: the values of the traced rows.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceRecord {
    /// The layer, or `None` for the embedding and the final norm and logits.
    pub layer: Option<usize>,
    /// Canonical node name.
    pub node: &'static str,
    /// One vector per traced row, in the order the rows were asked for.
    pub rows: Vec<Vec<f32>>,
}

/// Collects [`TraceRecord`]s during one traced step.
pub(crate) struct Tracer<B: Backend> {
    rows: Vec<u32>,
    nodes: Vec<&'static str>,
    /// Rows read back from each buffer: one past the largest traced row.
    span: usize,
    /// `[rows, n_experts]`: the router logits, computed by the backend's linear op beside its route op.
    router_logits: B::Buf,
    records: Vec<TraceRecord>,
}

impl<B: Backend> Tracer<B> {
    /// A tracer of `spec` in a step of `step_rows` tokens, for a router of `n_experts` outputs.
    pub(crate) fn new(
        b: &B,
        spec: TraceSpec<'_>,
        step_rows: usize,
        n_experts: usize,
    ) -> Result<Self> {
        let rows = spec.rows;
        if let Some(n) = spec.nodes.iter().find(|n| !TRACE_NODES.contains(n)) {
            return Err(Error::invalid(format!(
                "no traced node is called {n:?}; the nodes are {}",
                TRACE_NODES.join(", ")
            )));
        }
        let nodes = TRACE_NODES
            .iter()
            .copied()
            .filter(|n| spec.nodes.is_empty() || spec.nodes.contains(n))
            .collect();
        if let Some(&r) = rows.iter().find(|&&r| r as usize >= step_rows) {
            return Err(Error::invalid(format!(
                "traced row {r} is outside the step of {step_rows} tokens"
            )));
        }
        let span = rows.iter().max().map_or(0, |&r| r as usize + 1);
        Ok(Tracer {
            rows: rows.to_vec(),
            nodes,
            span,
            router_logits: b.alloc(step_rows, n_experts)?,
            records: Vec::new(),
        })
    }

    /// Records the traced rows of `buf`.
    pub(crate) fn tap(
        &mut self,
        b: &B,
        layer: Option<usize>,
        node: &'static str,
        buf: &B::Buf,
    ) -> Result<()> {
        if !self.wants(node) {
            return Ok(());
        }
        let values = b.read(buf, self.span)?;
        self.push_rows(layer, node, &values)
    }

    /// Records the router logits of `h` (bias included), computed by the backend's linear op.
    pub(crate) fn tap_router(
        &mut self,
        b: &B,
        step: &B::Step,
        layer: usize,
        h: &B::Buf,
        router: &B::Linear,
    ) -> Result<()> {
        if !self.wants("router_logits") {
            return Ok(());
        }
        b.linear(step, h, router, &mut self.router_logits)?;
        let values = b.read(&self.router_logits, self.span)?;
        self.push_rows(Some(layer), "router_logits", &values)
    }

    /// Records the experts each traced row was routed to and their weights, as the backend chose them.
    pub(crate) fn tap_routing(
        &mut self,
        b: &B,
        layer: usize,
        routing: &B::Routing,
        top_k: usize,
    ) -> Result<()> {
        if !self.wants("experts") && !self.wants("expert_weights") {
            return Ok(());
        }
        let chosen = b.read_routing(routing, self.span, top_k)?;
        if self.wants("experts") {
            let experts: Vec<f32> = chosen.iter().map(|&(e, _)| e as f32).collect();
            self.push_cols(Some(layer), "experts", &experts, top_k)?;
        }
        if self.wants("expert_weights") {
            let weights: Vec<f32> = chosen.iter().map(|&(_, w)| w).collect();
            self.push_cols(Some(layer), "expert_weights", &weights, top_k)?;
        }
        Ok(())
    }

    fn wants(&self, node: &str) -> bool {
        self.nodes.contains(&node)
    }

    fn push_rows(
        &mut self,
        layer: Option<usize>,
        node: &'static str,
        values: &[f32],
    ) -> Result<()> {
        let cols = values.len() / self.span.max(1);
        self.push_cols(layer, node, values, cols)
    }

    fn push_cols(
        &mut self,
        layer: Option<usize>,
        node: &'static str,
        values: &[f32],
        cols: usize,
    ) -> Result<()> {
        let rows = self
            .rows
            .iter()
            .map(|&r| {
                let start = r as usize * cols;
                values.get(start..start + cols).map(<[f32]>::to_vec)
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::invalid(format!("trace of {node}: a short read")))?;
        self.records.push(TraceRecord { layer, node, rows });
        Ok(())
    }

    /// The records collected so far.
    pub(crate) fn into_records(self) -> Vec<TraceRecord> {
        self.records
    }
}
