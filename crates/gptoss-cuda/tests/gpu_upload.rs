//! Staged weight uploads: every stored format, uploaded through pinned staging buffers (tiny ones, so a
//! tensor spans many buffers, buffers are reused while copies are in flight, and rows larger than a
//! buffer take the unstaged path) and read back, must give exactly the bytes of the serial host packer;
//! after the upload the mapped pages of a file-backed tensor are no longer resident in the process.
//! Needs a GPU: run by `scripts/gpu-check.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gptoss_cuda::device::Device;
use gptoss_cuda::ops::DevWeight;
use gptoss_cuda::staging::{Stager, SLOTS, SLOT_BYTES};
use gptoss_cuda::testing::{random_tensor, Rng, TestFormat};
use gptoss_cuda::weights::{pack, PackPlan};
use gptoss_cuda::CudaOptions;
use gptoss_formats::{QuantTensor, Storage};

fn device() -> Device {
    Device::open(&CudaOptions::from_env().unwrap()).unwrap()
}

/// Uploads `parts` (one layout) through `stager`, reads them back and compares with `pack`'s bytes.
fn check(dev: &Device, stager: &mut Stager, parts: &[QuantTensor], what: &str) {
    let plans: Vec<PackPlan<'_>> = parts.iter().map(|t| PackPlan::new(t).unwrap()).collect();
    let w = DevWeight::upload(&dev.stream, &dev.meter, stager, &plans, what).unwrap();
    let (data, scales) = w.to_host(&dev.stream).unwrap();
    let (mut want_data, mut want_scales) = (Vec::new(), Vec::new());
    for t in parts {
        let p = pack(t).unwrap();
        want_data.extend_from_slice(&p.data);
        want_scales.extend_from_slice(&p.scales);
    }
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
    let w = DevWeight::upload(
        &dev.stream,
        &dev.meter,
        &mut stager,
        &plans,
        "a mapped tensor",
    )
    .unwrap();
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
