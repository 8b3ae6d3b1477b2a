//! `n` choices of one request: `n` generations of the same prompt with seeds `seed + i`, submitted
//! together so the engine prefills the prompt once and forks its KV blocks to the others
//! (`gptoss_engine::scheduler`). Their steps are merged into one stream tagged with the choice index.
//! Dropping [`Choices`] (a client gone) cancels every generation.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::admission::Permit;
use crate::error::{ApiError, ApiResult};
use crate::generation::{Delta, Finish, GenSpec, Generation, Step, Usage};
use crate::AppState;

/// One finished choice: its deltas, why it ended, its token counts.
pub type Answer = (Vec<Delta>, Finish, Usage);

/// The running choices of a request.
pub struct Choices {
    rx: mpsc::UnboundedReceiver<(usize, ApiResult<Step>)>,
    open: usize,
}

impl Choices {
    /// Starts `n` generations of `spec` under one admission `permit`; fails when the engine refuses
    /// the request (before anything is streamed).
    pub async fn start(
        state: Arc<AppState>,
        spec: GenSpec,
        n: usize,
        permit: Permit,
    ) -> ApiResult<Self> {
        let permit = Arc::new(permit);
        let mut gens = Vec::with_capacity(n);
        let group = (n > 1).then(|| state.engine.fork_group());
        for i in 0..n {
            let mut spec = spec.clone();
            spec.sampling.seed = spec.sampling.seed.wrapping_add(i as u64);
            spec.fork = group;
            gens.push(Generation::start(state.clone(), spec, permit.clone()).await?);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        for (i, mut gen) in gens.into_iter().enumerate() {
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    let step = tokio::select! {
                        step = gen.next() => step,
                        () = tx.closed() => return,
                    };
                    let Some(step) = step else { return };
                    if tx.send((i, step)).is_err() {
                        return;
                    }
                }
            });
        }
        Ok(Choices { rx, open: n })
    }

    /// The next step of any choice, with its index; `None` when every choice has ended.
    pub async fn next(&mut self) -> Option<(usize, ApiResult<Step>)> {
        if self.open == 0 {
            return None;
        }
        let (i, step) = self.rx.recv().await?;
        if matches!(step, Ok(Step::Done(..)) | Err(_)) {
            self.open -= 1;
        }
        Some((i, step))
    }

    /// Runs every choice to its end.
    pub async fn collect(mut self) -> ApiResult<Vec<Answer>> {
        let mut deltas: Vec<Vec<Delta>> = Vec::new();
        let mut ends: Vec<Option<(Finish, Usage)>> = Vec::new();
        while let Some((i, step)) = self.next().await {
            if deltas.len() <= i {
                deltas.resize_with(i + 1, Vec::new);
                ends.resize(i + 1, None);
            }
            match step? {
                Step::Deltas(d) => deltas[i].extend(d),
                Step::Done(f, u) => ends[i] = Some((f, u)),
            }
        }
        deltas
            .into_iter()
            .zip(ends)
            .map(|(d, end)| {
                let (f, u) =
                    end.ok_or_else(|| ApiError::internal("a choice ended without a finish"))?;
                Ok((d, f, u))
            })
            .collect()
    }
}

/// The usage of a request from its choices' (the prompt counted once, completions summed).
pub fn total_usage(usages: impl IntoIterator<Item = Usage>) -> Usage {
    let mut total = Usage::default();
    for u in usages {
        total.prompt_tokens = u.prompt_tokens;
        total.completion_tokens += u.completion_tokens;
        total.cached_tokens = total.cached_tokens.max(u.cached_tokens);
    }
    total
}
