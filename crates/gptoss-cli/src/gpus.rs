//! Common NVIDIA cards for `gptoss fit --gpu`: memory and memory bandwidth from NVIDIA's published
//! specifications (GeForce product pages and the data-center datasheets), and name matching that
//! forgives spacing, case and the "NVIDIA"/"GeForce" prefixes.

use anyhow::{bail, Result};

/// One card.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gpu {
    /// The name as NVIDIA writes it.
    pub name: &'static str,
    /// Memory in MiB.
    pub vram_mib: u64,
    /// Memory bandwidth in GB/s (10^9 bytes per second).
    pub bandwidth_gbs: f64,
}

impl Gpu {
    /// Memory in bytes.
    pub fn vram_bytes(&self) -> u64 {
        self.vram_mib << 20
    }
}

const fn gpu(name: &'static str, vram_gib: u64, bandwidth_gbs: f64) -> Gpu {
    Gpu {
        name,
        vram_mib: vram_gib * 1024,
        bandwidth_gbs,
    }
}

/// The table. Bandwidths are NVIDIA's spec-sheet figures (memory data rate × bus width):
/// GeForce RTX 30 series: 3060 12GB 360 GB/s (15 Gbps × 192-bit), 3080 10GB 760 (19 × 320), 3080 12GB
/// 912 (19 × 384), 3090 936 (19.5 × 384), 3090 Ti 1008 (21 × 384). RTX 40: 4060 Ti 8/16GB 288 (18 × 128),
/// 4070 / 4070 Super / 4070 Ti 504 (21 × 192), 4070 Ti Super 672 (21 × 256), 4080 716.8 (22.4 × 256),
/// 4080 Super 736 (23 × 256), 4090 1008 (21 × 384). RTX 50: 5080 960 (30 × 256), 5090 1792 (28 × 512).
/// Data center (datasheets): A10 24GB 600 GB/s; A100 40GB 1,555 GB/s; A100 80GB SXM 2,039 GB/s; L4 24GB
/// 300 GB/s; L40S 48GB 864 GB/s; H100 SXM 80GB 3.35 TB/s and H100 PCIe 80GB 2.0 TB/s; H200 141GB 4.8 TB/s.
/// H100 and H200 memory is what `nvidia-smi` reports (81,559 and 143,771 MiB).
pub const GPUS: &[Gpu] = &[
    gpu("RTX 3060 12GB", 12, 360.0),
    gpu("RTX 3080 10GB", 10, 760.0),
    gpu("RTX 3080 12GB", 12, 912.0),
    gpu("RTX 3090", 24, 936.0),
    gpu("RTX 3090 Ti", 24, 1008.0),
    gpu("RTX 4060 Ti 8GB", 8, 288.0),
    gpu("RTX 4060 Ti 16GB", 16, 288.0),
    gpu("RTX 4070", 12, 504.0),
    gpu("RTX 4070 Super", 12, 504.0),
    gpu("RTX 4070 Ti", 12, 504.0),
    gpu("RTX 4070 Ti Super", 16, 672.0),
    gpu("RTX 4080", 16, 716.8),
    gpu("RTX 4080 Super", 16, 736.0),
    gpu("RTX 4090", 24, 1008.0),
    gpu("RTX 5080", 16, 960.0),
    gpu("RTX 5090", 32, 1792.0),
    gpu("A10", 24, 600.0),
    gpu("A100 40GB", 40, 1555.0),
    gpu("A100 80GB", 80, 2039.0),
    gpu("L4", 24, 300.0),
    gpu("L40S", 48, 864.0),
    Gpu {
        name: "H100 80GB",
        vram_mib: 81_559,
        bandwidth_gbs: 3350.0,
    },
    Gpu {
        name: "H100 PCIe",
        vram_mib: 81_559,
        bandwidth_gbs: 2000.0,
    },
    Gpu {
        name: "H200",
        vram_mib: 143_771,
        bandwidth_gbs: 4800.0,
    },
];

/// `name` lower-cased without spaces, dashes, "nvidia", "geforce" or a leading "rtx".
fn key(name: &str) -> String {
    let k: String = name
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let k = k.replace("nvidia", "").replace("geforce", "");
    k.strip_prefix("rtx").map(str::to_string).unwrap_or(k)
}

/// The card `name` names: an exact match, else the only card whose name starts with it; fails listing
/// the candidates (or the whole table) otherwise.
pub fn find(name: &str) -> Result<Gpu> {
    let want = key(name);
    if let Some(g) = GPUS.iter().find(|g| key(g.name) == want) {
        return Ok(*g);
    }
    let starts: Vec<&Gpu> = GPUS
        .iter()
        .filter(|g| !want.is_empty() && key(g.name).starts_with(&want))
        .collect();
    match starts.as_slice() {
        [one] => Ok(**one),
        [] => bail!(
            "--gpu `{name}`: not in the table; known cards: {} (or give --vram SIZE and --bandwidth GB/s)",
            names(GPUS.iter())
        ),
        many => bail!(
            "--gpu `{name}` is ambiguous: {} (name the memory size too)",
            names(many.iter().copied())
        ),
    }
}

fn names<'a>(gpus: impl Iterator<Item = &'a Gpu>) -> String {
    gpus.map(|g| g.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_loosely() {
        assert_eq!(find("RTX 4080").unwrap().name, "RTX 4080");
        assert_eq!(
            find("nvidia geforce rtx 4080 super").unwrap().name,
            "RTX 4080 Super"
        );
        assert_eq!(find("4090").unwrap().vram_bytes(), 24 << 30);
        assert_eq!(find("h200").unwrap().bandwidth_gbs, 4800.0);
        assert_eq!(find("L40S").unwrap().vram_mib, 48 * 1024);
        let e = find("RTX 3080").unwrap_err().to_string();
        assert!(
            e.contains("ambiguous") && e.contains("RTX 3080 10GB"),
            "{e}"
        );
        let e = find("Voodoo 2").unwrap_err().to_string();
        assert!(
            e.contains("not in the table") && e.contains("RTX 4090"),
            "{e}"
        );
    }
}
