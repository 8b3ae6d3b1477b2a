//! `--gpus A,B,..`: the model split by layers over several GPUs (or, with a repeated ordinal, several
//! "virtual devices" of one GPU), one pipeline stage per entry (`gptoss_engine::pipeline`). The planner
//! cuts the layers by each device's budget (or takes `--split`), sizes the shared KV pool by the tightest
//! stage, and each stage's plan is printed and checked before any weight is uploaded.

use anyhow::{bail, Result};
use gptoss_cuda::CudaBackend;
use gptoss_engine::pipeline::{plan_pipeline, PipelineRequest};
use gptoss_engine::placement::WeightSplit;
use gptoss_engine::{Capacity, ExpertPlacement, LayerSplit, Model};
use gptoss_formats::ModelWeights;

use crate::device::{gib_str, host_rss, kv_precision, open_gpu};
use crate::source::{ExpertCacheSize, ModelArgs};

/// Refuses what the split does not do yet, before any device is opened.
pub fn check_args(args: &ModelArgs, layers: usize) -> Result<()> {
    let gpus = &args.gpus;
    if args.cpu_moe || args.n_cpu_moe.is_some() {
        bail!("--cpu-moe / --n-cpu-moe are not supported with several --gpus yet: the split keeps every expert on the GPUs");
    }
    if let ExpertCacheSize::Bytes(_) = args.expert_cache {
        bail!("--expert-cache SIZE is not supported with several --gpus yet (no expert is kept in host memory)");
    }
    let repeated = gpus.iter().enumerate().any(|(i, g)| gpus[..i].contains(g));
    if repeated && args.max_vram.is_none() {
        bail!(
            "--gpus {gpus:?} names a GPU more than once (virtual devices sharing a card): give --max-vram, \
             the budget of each, so that together they fit the card"
        );
    }
    if gpus.len() > layers {
        bail!(
            "--gpus names {} devices for a model of {layers} layers: each needs at least one layer",
            gpus.len()
        );
    }
    if !args.split.is_empty() {
        if args.split.len() != gpus.len() {
            bail!(
                "--split gives {} layer counts for {} --gpus; give one per GPU",
                args.split.len(),
                gpus.len()
            );
        }
        LayerSplit::from_counts(&args.split, layers)
            .map_err(|e| anyhow::anyhow!("--split: {e}"))?;
    }
    Ok(())
}

/// Opens every GPU of `--gpus`, plans the split and uploads each stage's layers to its device.
pub fn build(
    args: &ModelArgs,
    weights: &ModelWeights,
    capacity: Capacity,
) -> Result<Model<CudaBackend>> {
    let config = &weights.config;
    check_args(args, config.num_hidden_layers)?;
    let distinct = args
        .gpus
        .iter()
        .enumerate()
        .any(|(i, g)| i > 0 && !args.gpus[..i].contains(g));
    let switch = std::env::var("GPTOSS_EXPERIMENTAL_PIPELINE").is_ok_and(|v| v.trim() == "1");
    if distinct && !switch {
        bail!(
            "--gpus with several distinct GPUs: the pipeline split is verified on one card only (virtual \
             devices, a repeated ordinal such as --gpus 0,0: the GPU test gpu_pipeline); no machine with \
             several GPUs has been available to test it on; set GPTOSS_EXPERIMENTAL_PIPELINE=1 to run it anyway"
        );
    }
    let backends = args
        .gpus
        .iter()
        .map(|&g| open_gpu(args, g).map_err(|e| anyhow::anyhow!("--gpus: GPU {g}: {e:#}")))
        .collect::<Result<Vec<_>>>()?;
    let budgets: Vec<u64> = backends
        .iter()
        .map(|b| {
            let m = &b.device().meter;
            m.cap_bytes().saturating_sub(m.used_bytes())
        })
        .collect();
    let given = match args.split.is_empty() {
        true => None,
        false => Some(LayerSplit::from_counts(
            &args.split,
            config.num_hidden_layers,
        )?),
    };
    let plan = plan_pipeline(PipelineRequest {
        config,
        weights: &WeightSplit::of_weights(weights),
        capacity: &capacity,
        kv: kv_precision(args.kv_cache),
        budgets: &budgets,
        split: given.as_ref(),
    })?;
    eprintln!(
        "[pipeline over {} devices: {} ({}); the hidden state crosses between them through host memory]",
        backends.len(),
        plan.split,
        if given.is_some() {
            "--split"
        } else {
            "cut by each device's budget"
        }
    );
    for ((stage, backend), (gpu, budget)) in plan
        .stages
        .iter()
        .zip(&backends)
        .zip(args.gpus.iter().zip(&budgets))
    {
        let dev = backend.device();
        eprintln!(
            "[stage on GPU {gpu} {} (sm_{}), layers {}..{}: {} · budget {}]",
            dev.caps.name,
            dev.caps.compute,
            stage.layers.start,
            stage.layers.end,
            stage.plan,
            gib_str(*budget)
        );
        backend.check_plan(&stage.plan)?;
    }
    let capacity = Capacity {
        kv_blocks: Some(plan.kv_blocks),
        ..capacity
    };
    let started = std::time::Instant::now();
    let all = ExpertPlacement::all_on_device();
    let model = Model::pipeline(backends, &plan.split, weights, capacity, &all)?;
    let took = started.elapsed().as_secs_f64();
    match host_rss() {
        Some((rss, _)) => eprintln!(
            "[weights on the GPUs in {took:.2} s; host memory after upload {}]",
            gib_str(rss)
        ),
        None => eprintln!("[weights on the GPUs in {took:.2} s]"),
    }
    Ok(model)
}
