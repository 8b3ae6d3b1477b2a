//! Staged weight uploads: every stored format, uploaded through pinned staging buffers (tiny ones, so a
//! tensor spans many buffers, buffers are reused while copies are in flight, and rows larger than a
//! buffer take the unstaged path) and read back, must give exactly the bytes of the serial host packer;
//! the ggml block formats repacked on the device from their raw blocks give the same bytes as the host
//! repack (plain tensors of awkward shapes, stacked gate_up experts, many chunks), and the tiny GGUF
//! fixtures the same logits either way; experts copied into expert slots (the hot-expert cache, streamed
//! layers) take the device repack too, with the host packer's bytes; after the upload the mapped pages of a
//! file-backed tensor are no longer resident in the process. Needs a GPU: run by `scripts/gpu-check.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gptoss_cuda::device::Device;
use gptoss_cuda::ops::slots::{alloc_slots, upload_slot};
use gptoss_cuda::ops::DevWeight;
use gptoss_cuda::staging::{Stager, SLOTS, SLOT_BYTES};
use gptoss_cuda::testing::{random_bytes_tensor, random_tensor, Rng, TestFormat};
use gptoss_cuda::weights::{pack, PackPlan};
use gptoss_cuda::{CudaBackend, CudaOptions, RepackSite};
use gptoss_engine::{Batch, Capacity, Model};
use gptoss_formats::{Expert, Linear, QuantTensor, Storage};

fn device() -> Device {
    Device::open(&CudaOptions::from_env().unwrap()).unwrap()
}

/// The serial host packer's codes and scales of `parts`, one after another.
fn packed<'a>(parts: impl IntoIterator<Item = &'a QuantTensor>) -> (Vec<u8>, Vec<u8>) {
    let (mut data, mut scales) = (Vec::new(), Vec::new());
    for t in parts {
        let p = pack(t).unwrap();
        data.extend_from_slice(&p.data);
        scales.extend_from_slice(&p.scales);
    }
    (data, scales)
}

/// Uploads `parts` (one layout) through `stager`, reads them back and compares with `pack`'s bytes.
fn check(dev: &Device, stager: &mut Stager, parts: &[QuantTensor], what: &str) {
    let plans: Vec<PackPlan<'_>> = parts.iter().map(|t| PackPlan::new(t).unwrap()).collect();
    let w = DevWeight::upload(dev, stager, &plans, what).unwrap();
    let (data, scales) = w.to_host(&dev.stream).unwrap();
    let (want_data, want_scales) = packed(parts);
    // Empty arrays still get a one-byte buffer (every buffer has an address).
    assert_eq!(&data[..want_data.len()], &want_data[..], "{what}: data");
    if !want_scales.is_empty() {
        assert_eq!(scales, want_scales, "{what}: scales");
    }
}

#[test]
#[ignore = "needs GPU"]
fn staged_uploads_equal_the_host_packer_in_every_format() {
    let dev = device();
    let mut rng = Rng(21);
    for (slot_bytes, slots) in [(64, 2), (1000, 3), (SLOT_BYTES, SLOTS)] {
        let mut stager = Stager::new(&dev.ctx, slot_bytes, slots).unwrap();
        for format in TestFormat::ALL {
            for (rows, cols) in [(3, 64), (5, 96), (2, 45), (33, 128)] {
                if cols % 32 != 0 && !matches!(format, TestFormat::Dense(_)) {
                    continue;
                }
                // Three "experts" stacked back to back, as upload_experts does.
                let parts: Vec<_> = (0..3)
                    .map(|_| random_tensor(&mut rng, format, rows, cols, 0.5))
                    .collect();
                check(
                    &dev,
                    &mut stager,
                    &parts,
                    &format!("{format:?} {rows}x{cols}, slots of {slot_bytes}"),
                );
            }
        }
        // GGUF gate_up: ggml MXFP4 gate and up rows interleaved lazily.
        let (gate, up) = (
            random_tensor(&mut rng, TestFormat::GgmlMxfp4, 7, 96, 1.0),
            random_tensor(&mut rng, TestFormat::GgmlMxfp4, 7, 96, 1.0),
        );
        let woven = Storage::interleaved(gate.data.clone(), up.data.clone(), 3 * 17).unwrap();
        let t = QuantTensor {
            shape: vec![14, 96],
            format: gate.format.clone(),
            data: woven,
        };
        check(&dev, &mut stager, &[t], "lazy interleave");
        stager.finish().unwrap();
    }
}

/// Uploads `parts` (one layout) with the device repack and with the host repack, reads both back and
/// compares them with each other and with `pack`'s bytes; checks the device path ran whenever every
/// part's chunks fit the staging buffers.
fn device_and_host(dev: &mut Device, stager: &mut Stager, parts: &[QuantTensor], what: &str) {
    let plans: Vec<PackPlan<'_>> = parts.iter().map(|t| PackPlan::new(t).unwrap()).collect();
    let fits = plans.iter().all(|p| {
        let raw = p.raw.as_ref().expect("a raw plan");
        raw.chunks(stager.slot_bytes()).is_some()
    });
    let mut upload = |site| {
        dev.repack = site;
        let before = stager.raw_bytes();
        let w = DevWeight::upload(dev, stager, &plans, what).unwrap();
        (w.to_host(&dev.stream).unwrap(), stager.raw_bytes() - before)
    };
    let ((dev_data, dev_scales), raw) = upload(RepackSite::Device);
    let ((host_data, host_scales), none) = upload(RepackSite::Host);
    let stored: usize = parts.iter().map(|t| t.data.len()).sum();
    assert_eq!(
        raw,
        if fits { stored as u64 } else { 0 },
        "{what}: raw bytes"
    );
    assert_eq!(none, 0, "{what}: GPTOSS_REPACK=host sent raw bytes");
    let at = |a: &[u8], b: &[u8]| (a.len(), b.len(), a.iter().zip(b).position(|(x, y)| x != y));
    assert!(
        dev_data == host_data,
        "{what}: codes differ (lengths, first difference: {:?})",
        at(&dev_data, &host_data)
    );
    assert!(
        dev_scales == host_scales,
        "{what}: scales differ {:?}",
        at(&dev_scales, &host_scales)
    );
    let (want_data, want_scales) = packed(parts);
    assert!(
        dev_data == want_data && dev_scales == want_scales,
        "{what}: not the host packer's bytes"
    );
}

/// `experts` gate_up tensors `[2 * half, cols]` as the GGUF reader makes them from stacked
/// `ffn_gate_exps` / `ffn_up_exps`: each a lazy interleave of windows of the two stacks.
fn stacked_gate_up(
    rng: &mut Rng,
    format: TestFormat,
    experts: usize,
    half: usize,
    cols: usize,
) -> Vec<QuantTensor> {
    let (gate, up) = (
        random_bytes_tensor(rng, format, experts * half, cols),
        random_bytes_tensor(rng, format, experts * half, cols),
    );
    let per = gate.data.len() / experts;
    (0..experts)
        .map(|e| QuantTensor {
            shape: vec![2 * half, cols],
            format: gate.format.clone(),
            data: Storage::interleaved(
                gate.data.slice(e * per, per),
                up.data.slice(e * per, per),
                per / half,
            )
            .unwrap(),
        })
        .collect()
}

#[test]
#[ignore = "needs GPU"]
fn device_repack_equals_the_host_repack() {
    let mut dev = device();
    let mut rng = Rng(41);
    let formats = [
        TestFormat::Q8_0,
        TestFormat::GgmlMxfp4,
        TestFormat::Q4_0,
        TestFormat::Iq4Nl,
    ];
    // Buffers of a few blocks (rows of 2880 do not fit: the host path), of an odd size, and the default.
    for (slot_bytes, slots) in [(1000, 3), (12_345, 2), (SLOT_BYTES, SLOTS)] {
        let mut stager = Stager::new(&dev.ctx, slot_bytes, slots).unwrap();
        for format in formats {
            for (rows, cols) in [(1, 32), (7, 96), (33, 288), (101, 2880)] {
                let parts: Vec<_> = (0..3)
                    .map(|_| random_bytes_tensor(&mut rng, format, rows, cols))
                    .collect();
                let what = format!("{format:?} 3 x {rows}x{cols}, slots of {slot_bytes}");
                device_and_host(&mut dev, &mut stager, &parts, &what);
            }
            for (experts, half, cols) in [(3, 1, 32), (4, 7, 96), (2, 45, 2880)] {
                let parts = stacked_gate_up(&mut rng, format, experts, half, cols);
                let what = format!(
                    "{format:?} gate_up {experts} x 2x{half}x{cols}, slots of {slot_bytes}"
                );
                device_and_host(&mut dev, &mut stager, &parts, &what);
            }
        }
        stager.finish().unwrap();
    }
    // Several full-size chunks: a Q8_0 table of 12,289 rows (37.6 MB) and two 20b-shaped MXFP4 gate_up
    // experts (8.8 MB each).
    let mut stager = Stager::new(&dev.ctx, SLOT_BYTES, SLOTS).unwrap();
    let table = random_bytes_tensor(&mut rng, TestFormat::Q8_0, 12_289, 2880);
    device_and_host(&mut dev, &mut stager, &[table], "Q8_0 12289x2880");
    let experts = stacked_gate_up(&mut rng, TestFormat::GgmlMxfp4, 2, 2880, 2880);
    device_and_host(
        &mut dev,
        &mut stager,
        &experts,
        "ggml MXFP4 gate_up 2 x 5760x2880",
    );
}

/// Experts in a ggml block format copied into expert slots (what the hot-expert cache and streamed layers
/// do) go up as raw blocks and are repacked on the device: the slots then hold the host packer's bytes,
/// the same as with `GPTOSS_REPACK=host`, each expert in its own slot (filled out of order), with the raw
/// bytes counted once per expert.
#[test]
#[ignore = "needs GPU"]
fn expert_slots_take_the_device_repack() {
    let mut dev = device();
    let mut rng = Rng(43);
    let (n, half, cols) = (3, 45, 2880);
    let gate_up = stacked_gate_up(&mut rng, TestFormat::GgmlMxfp4, n, half, cols);
    let experts: Vec<Expert> = gate_up
        .into_iter()
        .map(|g| Expert {
            gate_up: Linear {
                weight: g,
                bias: Some((0..2 * half).map(|i| i as f32).collect()),
            },
            down: Linear {
                weight: random_bytes_tensor(&mut rng, TestFormat::GgmlMxfp4, 96, 2 * half * 32),
                bias: None,
            },
        })
        .collect();
    let mut fill = |site| {
        dev.repack = site;
        let mut stager = Stager::new(&dev.ctx, SLOT_BYTES, SLOTS).unwrap();
        let mut slots = alloc_slots(&dev.stream, &dev.meter, &experts[0], n).unwrap();
        for (slot, e) in experts.iter().enumerate().rev() {
            upload_slot(&dev, &mut stager, &mut slots, slot, e).unwrap();
        }
        stager.finish().unwrap();
        let read = |w: &DevWeight| w.to_host(&dev.stream).unwrap();
        (read(&slots.gate_up), read(&slots.down), stager.raw_bytes())
    };
    let (dev_gate_up, dev_down, raw) = fill(RepackSite::Device);
    let (host_gate_up, host_down, none) = fill(RepackSite::Host);
    let stored: usize = experts
        .iter()
        .map(|e| e.gate_up.weight.data.len() + e.down.weight.data.len())
        .sum();
    assert_eq!(raw, stored as u64, "raw bytes sent for the device repack");
    assert_eq!(none, 0, "GPTOSS_REPACK=host sent raw bytes");
    assert!(dev_gate_up == host_gate_up, "gate_up slots differ");
    assert!(dev_down == host_down, "down slots differ");
    let want = |w: fn(&Expert) -> &QuantTensor| packed(experts.iter().map(w));
    assert!(
        dev_gate_up == want(|e| &e.gate_up.weight),
        "gate_up: not the host packer's bytes"
    );
    assert!(
        dev_down == want(|e| &e.down.weight),
        "down: not the host packer's bytes"
    );
}

/// Logits of every position of a 24-token prompt, and the bytes repacked on the device.
fn fixture_logits(w: &gptoss_formats::ModelWeights, site: RepackSite) -> (Vec<f32>, u64) {
    let mut o = CudaOptions::from_env().unwrap();
    o.repack = site;
    let n = 24;
    let cap = Capacity {
        max_batch_tokens: n,
        max_logit_rows: n,
        slots: 1,
        context_tokens: 64,
        kv_blocks: None,
    };
    let mut m = Model::new(CudaBackend::new(&o).unwrap(), w, cap).unwrap();
    let prompt: Vec<u32> = (0..n).map(|i| ((i * 7919 + 13) % 486) as u32).collect();
    let mut batch = Batch::single(&prompt, 0, m.solo_table());
    batch.logit_rows = (0..n as u32).collect();
    m.forward(&batch).unwrap();
    (m.logits(n).unwrap(), m.backend().device_repacked_bytes())
}

#[test]
#[ignore = "needs GPU"]
fn gguf_fixtures_give_identical_logits_with_either_repack() {
    let dir = [
        std::path::Path::new("tests/fixtures/tiny/gguf").to_path_buf(),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/gguf"),
    ]
    .into_iter()
    .find(|p| p.is_dir())
    .expect("tests/fixtures/tiny/gguf");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{} GGUF fixtures", files.len());
    for path in files {
        let w = gptoss_formats::load(&path).unwrap().weights;
        let (device, raw) = fixture_logits(&w, RepackSite::Device);
        let (host, none) = fixture_logits(&w, RepackSite::Host);
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        println!("{name}: {raw} bytes repacked on the device");
        // Every fixture's experts are ggml MXFP4 (gate and up interleaved at upload).
        assert!(raw > 0 && none == 0, "{name}: {raw} / {none} raw bytes");
        assert!(device.iter().all(|x| x.is_finite()), "{name}");
        let same = device
            .iter()
            .zip(&host)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same && device.len() == host.len(), "{name}: logits differ");
    }
}

#[test]
#[ignore = "needs GPU"]
fn uploaded_file_pages_leave_the_resident_set() {
    // A 64 MiB dense bf16 tensor mapped from a file: resident after the host reads it, not after the upload.
    let (rows, cols) = (8192, 4096);
    let src = random_tensor(
        &mut Rng(5),
        TestFormat::Dense(gptoss_formats::DType::BF16),
        rows,
        cols,
        1.0,
    );
    let path = std::env::temp_dir().join(format!("gptoss-upload-{}.bin", std::process::id()));
    std::fs::write(&path, src.data.bytes()).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    // SAFETY: the test owns the file and does not change it while mapped.
    let map = std::sync::Arc::new(unsafe { memmap2::Mmap::map(&file) }.unwrap());
    let t = QuantTensor {
        shape: src.shape.clone(),
        format: src.format.clone(),
        data: Storage::Mapped {
            len: map.len(),
            map: map.clone(),
            start: 0,
        },
    };
    let touched: u64 = t
        .data
        .bytes()
        .iter()
        .step_by(4096)
        .map(|&b| u64::from(b))
        .sum();
    std::hint::black_box(touched);
    let before = mapped_rss_kib(map.as_ptr() as usize);
    let dev = device();
    let mut stager = Stager::new(&dev.ctx, SLOT_BYTES, SLOTS).unwrap();
    let plans = [PackPlan::new(&t).unwrap()];
    let w = DevWeight::upload(&dev, &mut stager, &plans, "a mapped tensor").unwrap();
    // Measured before anything reads the mapping again (the comparison below faults it back in).
    let after = mapped_rss_kib(map.as_ptr() as usize);
    let (data, _) = w.to_host(&dev.stream).unwrap();
    assert_eq!(
        data[..src.data.len()],
        *pack(&t).unwrap().data,
        "the uploaded bytes"
    );
    std::fs::remove_file(&path).unwrap();
    println!("mapped tensor resident: {before} KiB before the upload, {after} KiB after");
    assert!(
        before >= 60 << 10,
        "the read should have mapped the pages ({before} KiB)"
    );
    assert!(
        after < 1 << 10,
        "the upload should have released them ({after} KiB)"
    );
}

/// The `Rss` of the mapping that starts at `addr`, from /proc/self/smaps.
fn mapped_rss_kib(addr: usize) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut in_map = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((start, _)) = range.split_once('-') {
                if let Ok(s) = usize::from_str_radix(start, 16) {
                    in_map = s == addr;
                    continue;
                }
            }
        }
        if in_map {
            if let Some(kb) = line.strip_prefix("Rss:") {
                return kb.trim().trim_end_matches("kB").trim().parse().unwrap();
            }
        }
    }
    panic!("no mapping at {addr:#x} in /proc/self/smaps");
}
