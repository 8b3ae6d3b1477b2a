//! Model names and the files a name fetches: `ORG/NAME[@REVISION][:QUANT]` parsed, and the choice of
//! what the loader reads from a repo's file list (config, tokenizer, index and shards, or one GGUF).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// `ORG/NAME[@REVISION][:QUANT]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoSpec {
    /// `ORG/NAME`.
    pub repo: String,
    /// A branch, tag or commit (`main` when not given).
    pub revision: String,
    /// Picks the GGUF whose name holds it (`Q8_0`, `mxfp4`), as llama.cpp's `-hf` does.
    pub quant: Option<String>,
}

impl RepoSpec {
    /// Parses a model name; `None` when `text` is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let (repo, rest) = match text.split_once('@') {
            Some((repo, rest)) => (repo, Some(rest)),
            None => (text, None),
        };
        let (repo, revision, quant) = match rest {
            Some(rest) => {
                let (rev, quant) = rest
                    .split_once(':')
                    .map_or((rest, None), |(r, q)| (r, Some(q)));
                (repo, rev, quant)
            }
            None => {
                let (repo, quant) = repo
                    .split_once(':')
                    .map_or((repo, None), |(r, q)| (r, Some(q)));
                (repo, "main", quant)
            }
        };
        let ok_word = |w: &str| {
            !w.is_empty()
                && !w.starts_with(['.', '-'])
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        };
        let (org, name) = repo.split_once('/')?;
        let ok_rev = !revision.is_empty() && !revision.contains("..");
        let ok_quant = quant.is_none_or(ok_word);
        (ok_word(org) && ok_word(name) && ok_rev && ok_quant).then(|| RepoSpec {
            repo: repo.to_string(),
            revision: revision.to_string(),
            quant: quant.map(str::to_string),
        })
    }
}

/// The files of a repo that the loader reads, and what to hand it (relative to the snapshot).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Plan {
    /// Files to fetch, the index (if any) first.
    pub(super) files: Vec<String>,
    /// The shard index, whose listed shards replace the `*.safetensors` guess once it is read.
    pub(super) index: Option<String>,
    /// What `--model` loads: `""` (the snapshot), `original`, or a GGUF's name.
    pub(super) load: String,
}

/// Chooses the files: one GGUF when asked (`--hf-file`, `:QUANT`) or when the repo has only GGUFs;
/// otherwise the top-level safetensors checkpoint, else the `original/` one.
pub(super) fn plan(files: &[String], quant: Option<&str>, hf_file: Option<&str>) -> Result<Plan> {
    let one = |f: &str| Plan {
        files: vec![f.to_string()],
        index: None,
        load: f.to_string(),
    };
    if let Some(f) = hf_file {
        if !files.iter().any(|x| x == f) {
            bail!(
                "--hf-file {f}: the repo has no such file (it has: {})",
                files.join(", ")
            );
        }
        return Ok(one(f));
    }
    let ggufs: Vec<&String> = files.iter().filter(|f| f.ends_with(".gguf")).collect();
    if let Some(q) = quant {
        let q = q.to_ascii_lowercase();
        let hits: Vec<&&String> = ggufs
            .iter()
            .filter(|f| f.to_ascii_lowercase().contains(&q))
            .collect();
        return match hits.as_slice() {
            [f] => Ok(one(f)),
            [] => bail!(
                ":{q}: no GGUF of the repo matches (its GGUFs: {})",
                list(&ggufs)
            ),
            _ => bail!(
                ":{q} matches several GGUFs ({}); name one with --hf-file",
                list(&hits.iter().map(|f| **f).collect::<Vec<_>>())
            ),
        };
    }
    for dir in ["", "original/"] {
        let shards: Vec<&String> = files
            .iter()
            .filter(|f| {
                f.strip_prefix(dir)
                    .is_some_and(|r| !r.contains('/') && r.ends_with(".safetensors"))
            })
            .collect();
        if shards.is_empty() {
            continue;
        }
        let config = format!("{dir}config.json");
        if !files.contains(&config) {
            bail!("the repo has safetensors in `{dir}` but no {config}");
        }
        let index = format!("{dir}model.safetensors.index.json");
        let index = files.contains(&index).then_some(index);
        let tokenizer = format!("{dir}tokenizer.json");
        let mut fetch: Vec<String> = index.iter().cloned().collect();
        fetch.push(config);
        fetch.extend(files.contains(&tokenizer).then_some(tokenizer));
        fetch.extend(shards.into_iter().cloned());
        return Ok(Plan {
            files: fetch,
            index,
            load: dir.trim_end_matches('/').to_string(),
        });
    }
    match ggufs.as_slice() {
        [f] => Ok(one(f)),
        [] => bail!(
            "the repo has neither safetensors nor GGUF files (it has: {})",
            files.join(", ")
        ),
        _ => {
            let native: Vec<&&String> = ggufs
                .iter()
                .filter(|f| f.to_ascii_lowercase().contains("mxfp4"))
                .collect();
            match native.as_slice() {
                [f] => Ok(one(f)),
                _ => bail!(
                    "the repo holds several GGUFs ({}); pick one with ORG/NAME:QUANT or --hf-file",
                    list(&ggufs)
                ),
            }
        }
    }
}

/// `snapshot/load`, or the snapshot itself for an empty `load`.
pub(super) fn within(snapshot: &Path, load: &str) -> PathBuf {
    if load.is_empty() {
        snapshot.to_path_buf()
    } else {
        snapshot.join(load)
    }
}

fn list(files: &[&String]) -> String {
    files
        .iter()
        .map(|f| f.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(repo: &str, revision: &str, quant: Option<&str>) -> Option<RepoSpec> {
        Some(RepoSpec {
            repo: repo.into(),
            revision: revision.into(),
            quant: quant.map(Into::into),
        })
    }

    #[test]
    fn parses_model_names() {
        assert_eq!(
            RepoSpec::parse("openai/gpt-oss-20b"),
            spec("openai/gpt-oss-20b", "main", None)
        );
        assert_eq!(
            RepoSpec::parse("ggml-org/gpt-oss-20b-GGUF:Q8_0"),
            spec("ggml-org/gpt-oss-20b-GGUF", "main", Some("Q8_0"))
        );
        assert_eq!(
            RepoSpec::parse("a/b@v1.0:mxfp4"),
            spec("a/b", "v1.0", Some("mxfp4"))
        );
        assert_eq!(
            RepoSpec::parse("a/b@refs/pr/3"),
            spec("a/b", "refs/pr/3", None)
        );
        for bad in [
            "gpt-oss-20b",
            "a/b/c",
            "/abs/path",
            "./a/b",
            "a/",
            "a/b@",
            "a/b:",
            "a/b@../x",
            "a b/c",
        ] {
            assert_eq!(RepoSpec::parse(bad), None, "{bad}");
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plans_only_what_the_loader_reads() {
        let hf = names(&[
            ".gitattributes",
            "README.md",
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "original/config.json",
            "original/model.safetensors",
            "metal/model.bin",
        ]);
        let p = plan(&hf, None, None).unwrap();
        assert_eq!(p.index.as_deref(), Some("model.safetensors.index.json"));
        assert_eq!(
            p.files,
            names(&[
                "model.safetensors.index.json",
                "config.json",
                "tokenizer.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ])
        );
        assert_eq!(p.load, "");
        let orig = names(&[
            "tokenizer.json",
            "original/config.json",
            "original/model.safetensors",
        ]);
        let p = plan(&orig, None, None).unwrap();
        assert_eq!(
            (p.files, p.load.as_str()),
            (
                names(&["original/config.json", "original/model.safetensors"]),
                "original"
            )
        );
        let gguf = names(&[
            "README.md",
            "gpt-oss-20b-mxfp4.gguf",
            "gpt-oss-20b-Q8_0.gguf",
            "gpt-oss-20b-F16.gguf",
        ]);
        assert_eq!(
            plan(&gguf, None, None).unwrap().files,
            ["gpt-oss-20b-mxfp4.gguf"]
        );
        assert_eq!(
            plan(&gguf, Some("q8_0"), None).unwrap().load,
            "gpt-oss-20b-Q8_0.gguf"
        );
        assert_eq!(
            plan(&gguf, None, Some("gpt-oss-20b-F16.gguf"))
                .unwrap()
                .load,
            "gpt-oss-20b-F16.gguf"
        );
        let e = plan(&gguf, Some("Q4_K_M"), None).unwrap_err().to_string();
        assert!(
            e.contains("no GGUF") && e.contains("gpt-oss-20b-F16.gguf"),
            "{e}"
        );
        let e = plan(&gguf, None, Some("x.gguf")).unwrap_err().to_string();
        assert!(e.contains("--hf-file x.gguf"), "{e}");
        let two = names(&["a-Q8_0.gguf", "a-F16.gguf"]);
        assert!(plan(&two, None, None)
            .unwrap_err()
            .to_string()
            .contains("several GGUFs"));
    }
}
