//! Models by name: `--model ORG/NAME[@REVISION][:QUANT]` (and `gptoss pull`) resolved to files in the
//! Hugging Face cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), in its
//! exact layout (`models--ORG--NAME/{blobs,snapshots/COMMIT,refs}`), so files `huggingface-cli` fetched
//! are reused and the reverse. Only what the loader reads is fetched: config, tokenizer, the index and
//! the shards it names, or one GGUF. The `hf-hub` crate does the transfer (ETag / X-Repo-Commit
//! metadata, blobs and snapshot links, resume of a partial blob by `Range`); this module adds what it
//! lacks: `HF_HUB_CACHE`, `HF_TOKEN` and `HF_HUB_OFFLINE`, the choice of files, a check of every
//! downloaded blob against its ETag (sha256 for LFS files, the git blob sha1 for the others), and the
//! cached snapshot when the Hub cannot be reached.

mod names;

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use hf_hub::api::sync::{Api, ApiBuilder, ApiRepo};
use hf_hub::{Repo, RepoType};
use indicatif::{ProgressBar, ProgressStyle};
use sha1::Sha1;
use sha2::{Digest, Sha256};

pub use names::RepoSpec;
use names::{plan, within, Plan};

/// Arguments of `gptoss pull`.
#[derive(Args)]
pub struct PullArgs {
    /// The repo: `ORG/NAME[@REVISION][:QUANT]`.
    name: String,
    /// The file to take when the repo holds several GGUFs.
    #[arg(long, value_name = "FILE")]
    hf_file: Option<String>,
}

/// Downloads (or finds in the cache) what `--model NAME` would load, and prints its path.
pub fn pull(args: PullArgs) -> Result<()> {
    let Some(spec) = RepoSpec::parse(&args.name) else {
        bail!("`{}` is not a Hub model name (expected ORG/NAME[@REVISION][:QUANT], e.g. openai/gpt-oss-20b)", args.name);
    };
    let path = resolve(&HubEnv::from_env(), &spec, args.hf_file.as_deref())?;
    println!("{}", path.display());
    Ok(())
}

/// What `--model` names: a path that exists is used as it is; otherwise a Hub model name is resolved
/// through the cache; anything else is returned for the loader to report.
pub fn model_path(model: &Path, hf_file: Option<&str>) -> Result<PathBuf> {
    if model.exists() {
        if hf_file.is_some() {
            bail!(
                "--hf-file picks a file of a Hub repo, but --model {} is a local path",
                model.display()
            );
        }
        return Ok(model.to_path_buf());
    }
    match model.to_str().and_then(RepoSpec::parse) {
        Some(spec) => resolve(&HubEnv::from_env(), &spec, hf_file).with_context(|| {
            format!("--model {}: no such file or directory, and fetching it as a Hugging Face repo failed", model.display())
        }),
        None => Ok(model.to_path_buf()),
    }
}

/// The Hub settings, read from the environment once.
#[derive(Clone, Debug)]
pub struct HubEnv {
    /// `HF_ENDPOINT`, else `https://huggingface.co`.
    pub endpoint: String,
    /// The hub cache directory.
    pub cache: PathBuf,
    /// `HF_TOKEN`, else the token file `huggingface-cli login` writes.
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE` is set to a true value: only the cache is used.
    pub offline: bool,
}

impl HubEnv {
    /// Reads `HF_ENDPOINT`, `HF_HUB_CACHE` / `HUGGINGFACE_HUB_CACHE` / `HF_HOME` / `XDG_CACHE_HOME`,
    /// `HF_TOKEN` / `HF_TOKEN_PATH`, `HF_HUB_OFFLINE`, as huggingface_hub does.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let cache = var("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| {
                PathBuf::from(var("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache")
            });
            cache.join("huggingface")
        });
        let cache = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map_or_else(|| home.join("hub"), PathBuf::from);
        let token_file = var("HF_TOKEN_PATH").map_or_else(|| home.join("token"), PathBuf::from);
        let token = var("HF_TOKEN").or_else(|| {
            std::fs::read_to_string(token_file)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        Self {
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()),
            cache,
            token,
            offline,
        }
    }
}

/// The cache folder of a model repo.
fn repo_dir(env: &HubEnv, repo: &str) -> PathBuf {
    env.cache
        .join(format!("models--{}", repo.replace('/', "--")))
}

fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Downloads what is missing of the model `spec` names (nothing when its snapshot is complete) and
/// returns the path to load. Offline, or when the Hub cannot be reached, the cached snapshot is used.
pub fn resolve(env: &HubEnv, spec: &RepoSpec, hf_file: Option<&str>) -> Result<PathBuf> {
    if env.offline {
        return cached(env, spec, hf_file)
            .context("HF_HUB_OFFLINE is set, so only the cache is used");
    }
    let api = ApiBuilder::new()
        .with_endpoint(env.endpoint.clone())
        .with_cache_dir(env.cache.clone())
        .with_token(env.token.clone())
        .with_progress(false)
        .build()
        .context("setting up the Hub client")?;
    let repo = api.repo(Repo::with_revision(
        spec.repo.clone(),
        RepoType::Model,
        spec.revision.clone(),
    ));
    let info = match repo.info() {
        Ok(info) => info,
        Err(e) => {
            let why = format!(
                "{}@{}: asking {} for the repo's files: {e}",
                spec.repo, spec.revision, env.endpoint
            );
            return match cached(env, spec, hf_file) {
                Ok(path) => {
                    eprintln!("[{why}; using the cached snapshot {}]", path.display());
                    Ok(path)
                }
                Err(_) => Err(anyhow::anyhow!(why)),
            };
        }
    };
    if !is_commit(&info.sha) {
        bail!(
            "{}: the Hub gave `{}` as the commit of {}, not a commit hash",
            env.endpoint,
            info.sha,
            spec.revision
        );
    }
    let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let plan = plan(&files, spec.quant.as_deref(), hf_file)?;
    let fetched = fetch(&api, env, spec, &info.sha, &plan)?;
    let dir = repo_dir(env, &spec.repo);
    write_ref(&dir, &spec.revision, &info.sha)?;
    let snapshot = dir.join("snapshots").join(&info.sha);
    let short = &info.sha[..12];
    match fetched {
        0 => eprintln!(
            "[{}@{short}: in the cache at {}]",
            spec.repo,
            snapshot.display()
        ),
        n => eprintln!(
            "[{}@{short}: {n} file(s) downloaded into {}]",
            spec.repo,
            snapshot.display()
        ),
    }
    Ok(within(&snapshot, &plan.load))
}

/// Fetches the plan's files at `commit` that the snapshot lacks; returns how many were downloaded.
fn fetch(api: &Api, env: &HubEnv, spec: &RepoSpec, commit: &str, plan: &Plan) -> Result<usize> {
    let pinned = api.repo(Repo::with_revision(
        spec.repo.clone(),
        RepoType::Model,
        commit.to_string(),
    ));
    let dir = repo_dir(env, &spec.repo);
    let snapshot = dir.join("snapshots").join(commit);
    let mut files = plan.files.clone();
    let mut downloaded = 0;
    let mut i = 0;
    while let Some(file) = files.get(i).cloned() {
        i += 1;
        let have = snapshot.join(&file);
        if !have.is_file() {
            download(&pinned, &file)?;
            downloaded += 1;
        }
        if plan.index.as_deref() == Some(file.as_str()) {
            // The index names the shards the loader reads: fetch those rather than every *.safetensors.
            let listed = index_shards(&have)?;
            let prefix = file
                .rsplit_once('/')
                .map_or(String::new(), |(d, _)| format!("{d}/"));
            files.retain(|f| !f.ends_with(".safetensors"));
            files.extend(listed.into_iter().map(|s| format!("{prefix}{s}")));
        }
    }
    if commit != spec.revision {
        // hf-hub records the commit it fetched as a ref named after itself; huggingface_hub does not.
        let _ = std::fs::remove_file(dir.join("refs").join(commit));
    }
    Ok(downloaded)
}

/// The shard file names a `model.safetensors.index.json` lists.
fn index_shards(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let Some(map) = v.get("weight_map").and_then(|m| m.as_object()) else {
        bail!("{}: no `weight_map` object", path.display());
    };
    let mut shards: Vec<String> = map
        .values()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect();
    shards.sort();
    shards.dedup();
    if shards
        .iter()
        .any(|s| s.contains("..") || s.starts_with('/'))
    {
        bail!("{}: a shard name leaves the repo", path.display());
    }
    Ok(shards)
}

/// Downloads one file into the cache (resuming a partial blob) and checks it against its ETag.
fn download(repo: &ApiRepo, file: &str) -> Result<()> {
    if !std::io::stderr().is_terminal() {
        eprintln!("[downloading {}]", repo.url(file));
    }
    let pointer = repo
        .download_with_progress(file, Bar::default())
        .with_context(|| format!("downloading {}", repo.url(file)))?;
    verify(&pointer).with_context(|| format!("checking {file}"))?;
    // hf-hub leaves its lock file beside the blob; huggingface_hub keeps locks out of blobs/.
    if let Ok(blob) = pointer.canonicalize() {
        let _ = std::fs::remove_file(blob.with_extension("lock"));
    }
    Ok(())
}

/// Checks a cached file against the ETag its blob is named by: sha256 of the content for LFS files, the
/// git blob sha1 for the others. A mismatch removes the blob and its link, so a rerun fetches it anew.
fn verify(pointer: &Path) -> Result<()> {
    let blob = pointer
        .canonicalize()
        .with_context(|| format!("resolving {}", pointer.display()))?;
    let etag = blob
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let got = match etag.len() {
        64 => hex(&hash_file::<Sha256>(&blob, None)?),
        40 => {
            let len = std::fs::metadata(&blob)?.len();
            hex(&hash_file::<Sha1>(&blob, Some(format!("blob {len}\0").as_bytes()))?)
        }
        _ => bail!("the Hub's ETag `{etag}` is neither a sha256 nor a git sha1, so the file cannot be checked"),
    };
    if got != etag.to_ascii_lowercase() {
        let _ = std::fs::remove_file(&blob);
        let _ = std::fs::remove_file(pointer);
        bail!("checksum mismatch: the Hub's ETag is {etag} but the downloaded bytes hash to {got}; the file was removed, run again to fetch it anew");
    }
    Ok(())
}

fn hash_file<D: Digest>(path: &Path, prefix: Option<&[u8]>) -> Result<Vec<u8>> {
    let mut hasher = D::new();
    if let Some(p) = prefix {
        hasher.update(p);
    }
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_vec())
}

/// `refs/REVISION` holds the commit a branch or tag pointed at (as huggingface_hub writes it).
fn write_ref(dir: &Path, revision: &str, commit: &str) -> Result<()> {
    if is_commit(revision) {
        return Ok(());
    }
    let path = dir.join("refs").join(revision);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&path, commit).with_context(|| format!("writing {}", path.display()))
}

/// The model from the cache alone: the snapshot `refs/REVISION` points at, with the plan's files.
fn cached(env: &HubEnv, spec: &RepoSpec, hf_file: Option<&str>) -> Result<PathBuf> {
    let dir = repo_dir(env, &spec.repo);
    let commit = if is_commit(&spec.revision) {
        spec.revision.clone()
    } else {
        let r = dir.join("refs").join(&spec.revision);
        std::fs::read_to_string(&r)
            .map(|s| s.trim().to_string())
            .map_err(|_| {
                anyhow::anyhow!(
                    "{}@{} is not in the cache (no {})",
                    spec.repo,
                    spec.revision,
                    r.display()
                )
            })?
    };
    let snapshot = dir.join("snapshots").join(&commit);
    let files = list_files(&snapshot, &snapshot).with_context(|| {
        format!(
            "{}@{} is not in the cache (no {})",
            spec.repo,
            spec.revision,
            snapshot.display()
        )
    })?;
    let plan = plan(&files, spec.quant.as_deref(), hf_file)?;
    if let Some(missing) = plan.files.iter().find(|f| !snapshot.join(f).is_file()) {
        bail!(
            "{}: the cached snapshot lacks {missing}",
            snapshot.display()
        );
    }
    Ok(within(&snapshot, &plan.load))
}

/// Every file under `dir` (links followed), as paths relative to `root` with `/` separators.
fn list_files(root: &Path, dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(list_files(root, &path)?);
        } else if path.is_file() {
            if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The download's progress bar (indicatif on stderr, drawn only on a terminal).
#[derive(Default)]
struct Bar {
    bar: Option<ProgressBar>,
}

impl hf_hub::api::Progress for Bar {
    fn init(&mut self, size: usize, filename: &str) {
        let bar = self
            .bar
            .get_or_insert_with(|| ProgressBar::new(size as u64));
        bar.set_length(size as u64);
        bar.set_position(0);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(filename.to_string());
    }

    fn update(&mut self, size: usize) {
        if let Some(bar) = &self.bar {
            bar.inc(size as u64);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_sha256_and_git_sha1_etags() {
        let dir = std::env::temp_dir().join(format!("gptoss-hub-verify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // sha256("hello\n") and git's blob hash of "hello\n" (`git hash-object`).
        let lfs = dir.join("5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03");
        let git = dir.join("ce013625030ba8dba906f756967f9e9ca394464a");
        for blob in [&lfs, &git] {
            std::fs::write(blob, "hello\n").unwrap();
            verify(blob).unwrap();
        }
        std::fs::write(&lfs, "hellO\n").unwrap();
        let e = verify(&lfs).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
        assert!(!lfs.exists(), "a corrupt blob is removed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
