//! The config parsers: bytes starting with `GGUF` go through the GGUF container into the GGUF config and
//! vocabulary readers; anything else is read as config.json (HF, transformers v5 or original/ form).
//! Every accepted config must pass its own checks.
#![no_main]

use gptoss_formats::gguf::{config, container::GgufFile};
use gptoss_formats::ModelConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.starts_with(b"GGUF") {
        let Ok(file) = GgufFile::from_bytes(data, std::path::Path::new("fuzz.gguf")) else {
            return;
        };
        let rows = file
            .tensors
            .first()
            .and_then(|t| t.ne.get(1))
            .map(|&n| n as usize);
        if let Ok((cfg, _)) = config::model_config(&file, rows) {
            assert!(cfg.check("fuzz").is_ok());
        }
        let _ = config::embedded_vocab(&file);
        return;
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(cfg) = ModelConfig::from_json(&value, "fuzz.json") {
        assert!(cfg.check("fuzz.json").is_ok());
        assert_eq!(cfg.layer_types.len(), cfg.num_hidden_layers);
    }
});
