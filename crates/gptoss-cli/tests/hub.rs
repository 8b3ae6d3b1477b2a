//! Models by Hub name against a local stand-in for the Hugging Face Hub on 127.0.0.1 that speaks its
//! file API (`/api/models/ORG/NAME/revision/REV`, `resolve` URLs with ETag, X-Repo-Commit and Range)
//! and serves the tiny fixture: the first run downloads only what the loader reads into the HF cache
//! layout, the second downloads nothing, offline mode uses the cache, an interrupted download resumes
//! where it stopped, a corrupt file is caught by its checksum, `:QUANT` / `--hf-file` pick a GGUF, and
//! a cache laid out by huggingface_hub is reused.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha1::Sha1;
use sha2::{Digest, Sha256};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A file of a stand-in repo: its bytes and its ETag (sha256 for LFS files, else the git blob sha1).
struct File {
    bytes: Vec<u8>,
    etag: String,
}

fn file(bytes: Vec<u8>, lfs: bool) -> File {
    let etag = if lfs {
        hex(&Sha256::digest(&bytes))
    } else {
        let mut h = Sha1::new();
        h.update(format!("blob {}\0", bytes.len()).as_bytes());
        h.update(&bytes);
        hex(&h.finalize())
    };
    File { bytes, etag }
}

/// One request the stand-in saw.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    range: Option<String>,
    auth: Option<String>,
}

#[derive(Default)]
struct State {
    repos: BTreeMap<String, BTreeMap<String, File>>,
    seen: Vec<Seen>,
    /// A file whose first whole-body GET sends this many bytes and then stalls.
    stall: Option<(String, usize)>,
    /// A file served with one byte changed (its ETag unchanged).
    corrupt: Option<String>,
}

/// The stand-in Hub: one thread per connection, `Connection: close`.
struct Hub {
    url: String,
    state: Arc<Mutex<State>>,
}

impl Hub {
    fn start() -> Hub {
        let mut repos = BTreeMap::new();
        let dir = fixtures().join("hf-mxfp4");
        let mut st = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            if name == "reference.json" {
                continue;
            }
            let lfs = name.ends_with(".safetensors");
            st.insert(name, file(std::fs::read(&p).unwrap(), lfs));
        }
        st.insert("README.md".into(), file(b"# tiny\n".to_vec(), false));
        st.insert("original/model.safetensors".into(), file(vec![0; 64], true));
        st.insert("original/config.json".into(), file(b"{}".to_vec(), false));
        repos.insert("tiny/gpt-oss".to_string(), st);
        let mut gg = BTreeMap::new();
        for q in ["q8_0", "f32"] {
            let p = fixtures().join(format!("gguf/tiny-llamacpp-{q}.gguf"));
            gg.insert(
                format!("tiny-{}.gguf", q.to_uppercase()),
                file(std::fs::read(p).unwrap(), true),
            );
        }
        repos.insert("tiny/gpt-oss-GGUF".to_string(), gg);
        let state = Arc::new(Mutex::new(State {
            repos,
            ..State::default()
        }));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        Hub { url, state }
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Requests that fetched file bytes (not the `bytes=0-0` metadata probes).
    fn downloads(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.contains("/resolve/") && s.range.as_deref() != Some("bytes=0-0"))
            .collect()
    }

    fn clear(&self) {
        self.state.lock().unwrap().seen.clear();
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let (mut range, mut auth) = (None, None);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.to_ascii_lowercase().as_str() {
                "range" => range = Some(v.trim().to_string()),
                "authorization" => auth = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    let mut out = conn;
    let mut st = state.lock().unwrap();
    st.seen.push(Seen {
        path: path.clone(),
        range: range.clone(),
        auth,
    });
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let (repo, rev) = rest.split_once("/revision/").unwrap_or((rest, "main"));
        let Some(files) = st
            .repos
            .get(repo)
            .filter(|_| rev == "main" || rev == COMMIT)
        else {
            return respond(
                &mut out,
                "404 Not Found",
                &[("X-Error-Code", "RepoNotFound")],
                b"{\"error\":\"Repository not found\"}",
            );
        };
        let siblings: Vec<_> = files
            .keys()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let body =
            serde_json::json!({ "id": repo, "sha": COMMIT, "siblings": siblings }).to_string();
        return respond(
            &mut out,
            "200 OK",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
    }
    // /ORG/NAME/resolve/REV/PATH
    let segs: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    let found = match segs.as_slice() {
        [org, name, "resolve", rev, file] if *rev == "main" || *rev == COMMIT => st
            .repos
            .get(&format!("{org}/{name}"))
            .and_then(|r| r.get(*file))
            .map(|f| (f.bytes.clone(), f.etag.clone(), file.to_string())),
        _ => None,
    };
    let Some((mut bytes, etag, name)) = found else {
        return respond(
            &mut out,
            "404 Not Found",
            &[("X-Error-Code", "EntryNotFound")],
            b"not found",
        );
    };
    if st.corrupt.as_deref() == Some(name.as_str()) {
        bytes[0] ^= 1;
    }
    let size = bytes.len();
    let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap();
            let a: usize = a.parse().unwrap();
            let b: usize = if b.is_empty() {
                size - 1
            } else {
                b.parse().unwrap()
            };
            (a, b.min(size - 1))
        }
        None => (0, size - 1),
    };
    let stall = match &st.stall {
        Some((f, n)) if *f == name && start == 0 && end > 0 => {
            let n = *n;
            st.stall = None;
            Some(n)
        }
        _ => None,
    };
    drop(st);
    let etag_h = format!("\"{etag}\"");
    let cr = format!("bytes {start}-{end}/{size}");
    let mut headers = vec![
        ("ETag", etag_h.as_str()),
        ("X-Repo-Commit", COMMIT),
        ("Accept-Ranges", "bytes"),
    ];
    let status = if range.is_some() {
        headers.push(("Content-Range", cr.as_str()));
        "206 Partial Content"
    } else {
        "200 OK"
    };
    let body: &[u8] = if method == "HEAD" {
        &[]
    } else {
        &bytes[start..=end]
    };
    match stall {
        Some(n) => {
            let head = head(status, &headers, end + 1 - start);
            let _ = out.write_all(head.as_bytes());
            let _ = out.write_all(&body[..n]);
            let _ = out.flush();
            // Never finish: the client is killed while it waits.
            std::thread::sleep(Duration::from_secs(120));
        }
        None => respond(&mut out, status, &headers, body),
    }
}

fn head(status: &str, headers: &[(&str, &str)], len: usize) -> String {
    let mut h = format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    h
}

fn respond(out: &mut TcpStream, status: &str, headers: &[(&str, &str)], body: &[u8]) {
    let _ = out.write_all(head(status, headers, body.len()).as_bytes());
    let _ = out.write_all(body);
    let _ = out.flush();
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gptoss-hub-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `gptoss ARGS` with the Hub at `endpoint` and the HF home at `home` (no other HF or proxy settings).
fn gptoss(endpoint: &str, home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gptoss"));
    c.args(args)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", home);
    for k in [
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_OFFLINE",
    ] {
        c.env_remove(k);
    }
    for k in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
    ] {
        c.env_remove(k);
    }
    c
}

fn ok(mut c: Command) -> Output {
    c.stdin(Stdio::null());
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

fn repo_dir(home: &Path, repo: &str) -> PathBuf {
    home.join("hub")
        .join(format!("models--{}", repo.replace('/', "--")))
}

fn tokens_json(endpoint: &str, home: &Path, model: &str) -> serde_json::Value {
    let o = ok(gptoss(
        endpoint,
        home,
        &[
            "run", "-m", model, "--tokens", "1,2,3,4", "-n", "4", "--json", "--device", "cpu",
        ],
    ));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn first_run_downloads_what_the_loader_reads_and_the_second_nothing() {
    let hub = Hub::start();
    let home = scratch("first");
    let mut c = gptoss(&hub.url, &home, &["pull", "tiny/gpt-oss"]);
    c.env("HF_TOKEN", "hf_secret");
    let o = ok(c);
    let snapshot = repo_dir(&home, "tiny/gpt-oss")
        .join("snapshots")
        .join(COMMIT);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        snapshot.to_str().unwrap()
    );
    let mut got: Vec<String> = hub
        .downloads()
        .iter()
        .map(|s| s.path.rsplit('/').next().unwrap().to_string())
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "tokenizer.json"
        ]
    );
    assert!(
        hub.seen()
            .iter()
            .all(|s| s.auth.as_deref() == Some("Bearer hf_secret")),
        "HF_TOKEN is sent"
    );
    // The huggingface_hub layout: refs/main holds the commit, snapshot entries link into blobs/ETAG.
    let dir = repo_dir(&home, "tiny/gpt-oss");
    assert_eq!(
        std::fs::read_to_string(dir.join("refs/main")).unwrap(),
        COMMIT
    );
    let link = std::fs::read_link(snapshot.join("config.json")).unwrap();
    let etag = hub.state.lock().unwrap().repos["tiny/gpt-oss"]["config.json"]
        .etag
        .clone();
    assert_eq!(link, Path::new("../../blobs").join(&etag));
    assert_eq!(
        std::fs::read_dir(dir.join("refs")).unwrap().count(),
        1,
        "no ref named after the commit"
    );
    let blobs: Vec<String> = std::fs::read_dir(dir.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(blobs.len(), 5, "only blobs named by ETag: {blobs:?}");
    assert!(
        blobs.iter().all(|b| b.len() == 40 || b.len() == 64),
        "{blobs:?}"
    );
    // Loaded by name it is the fixture.
    hub.clear();
    let by_name = tokens_json(&hub.url, &home, "tiny/gpt-oss");
    let by_path = tokens_json(
        &hub.url,
        &home,
        fixtures().join("hf-mxfp4").to_str().unwrap(),
    );
    assert_eq!(by_name["tokens"], by_path["tokens"]);
    assert!(
        hub.downloads().is_empty(),
        "second run downloaded {:?}",
        hub.downloads()
    );
    // Offline, the cache alone serves it; an uncached repo is a clear error.
    let mut c = gptoss("http://127.0.0.1:9", &home, &["pull", "tiny/gpt-oss"]);
    c.env("HF_HUB_OFFLINE", "1");
    assert_eq!(
        String::from_utf8_lossy(&ok(c).stdout).trim(),
        snapshot.to_str().unwrap()
    );
    let mut c = gptoss("http://127.0.0.1:9", &home, &["pull", "tiny/other"]);
    let o = c.env("HF_HUB_OFFLINE", "1").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("HF_HUB_OFFLINE")
            && err.contains("tiny/other@main is not in the cache"),
        "{err}"
    );
    // Unreachable Hub: the cached snapshot is used, with a note.
    let o = ok(gptoss(
        "http://127.0.0.1:9",
        &home,
        &["pull", "tiny/gpt-oss"],
    ));
    assert!(String::from_utf8_lossy(&o.stderr).contains("using the cached snapshot"));
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let hub = Hub::start();
    let home = scratch("resume");
    let shard = "model-00002-of-00002.safetensors";
    let (size, etag) = {
        let st = hub.state.lock().unwrap();
        let f = &st.repos["tiny/gpt-oss"][shard];
        (f.bytes.len(), f.etag.clone())
    };
    let half = size / 2;
    hub.state.lock().unwrap().stall = Some((shard.to_string(), half));
    let mut child = gptoss(&hub.url, &home, &["pull", "tiny/gpt-oss"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let part = repo_dir(&home, "tiny/gpt-oss")
        .join("blobs")
        .join(format!("{etag}.part"));
    let started = Instant::now();
    while std::fs::metadata(&part).map_or(0, |m| m.len()) < half as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the partial blob never reached {half} bytes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(std::fs::metadata(&part).unwrap().len(), half as u64);
    hub.clear();
    ok(gptoss(&hub.url, &home, &["pull", "tiny/gpt-oss"]));
    let fetched: Vec<Seen> = hub
        .downloads()
        .into_iter()
        .filter(|s| s.path.ends_with(shard))
        .collect();
    assert_eq!(fetched.len(), 1, "{fetched:?}");
    assert_eq!(
        fetched[0].range.as_deref(),
        Some(format!("bytes={half}-").as_str())
    );
    let blob = repo_dir(&home, "tiny/gpt-oss").join("blobs").join(&etag);
    assert_eq!(hex(&Sha256::digest(std::fs::read(blob).unwrap())), etag);
    assert!(!part.exists());
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn a_corrupt_download_is_caught_and_removed() {
    let hub = Hub::start();
    let home = scratch("corrupt");
    hub.state.lock().unwrap().corrupt = Some("model-00001-of-00002.safetensors".into());
    let o = gptoss(&hub.url, &home, &["pull", "tiny/gpt-oss"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("checksum mismatch")
            && err.contains("model-00001-of-00002.safetensors"),
        "{err}"
    );
    let snapshot = repo_dir(&home, "tiny/gpt-oss")
        .join("snapshots")
        .join(COMMIT);
    assert!(!snapshot.join("model-00001-of-00002.safetensors").exists());
    // Served correctly, the next run completes.
    hub.state.lock().unwrap().corrupt = None;
    ok(gptoss(&hub.url, &home, &["pull", "tiny/gpt-oss"]));
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn quant_suffix_and_hf_file_pick_one_gguf() {
    let hub = Hub::start();
    let home = scratch("gguf");
    let o = ok(gptoss(&hub.url, &home, &["pull", "tiny/gpt-oss-GGUF:q8_0"]));
    assert!(String::from_utf8_lossy(&o.stdout)
        .trim()
        .ends_with("tiny-Q8_0.gguf"));
    let names: Vec<String> = hub
        .downloads()
        .iter()
        .map(|s| s.path.rsplit('/').next().unwrap().to_string())
        .collect();
    assert_eq!(names, ["tiny-Q8_0.gguf"]);
    // HF_HUB_CACHE moves the cache away from $HF_HOME/hub.
    let elsewhere = home.join("elsewhere");
    let mut c = gptoss(&hub.url, &home, &["pull", "tiny/gpt-oss-GGUF:f32"]);
    c.env("HF_HUB_CACHE", &elsewhere);
    let o = ok(c);
    let want = elsewhere
        .join("models--tiny--gpt-oss-GGUF/snapshots")
        .join(COMMIT)
        .join("tiny-F32.gguf");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        want.to_str().unwrap()
    );
    assert!(want.is_file());
    let o = ok(gptoss(
        &hub.url,
        &home,
        &["pull", "tiny/gpt-oss-GGUF", "--hf-file", "tiny-F32.gguf"],
    ));
    assert!(String::from_utf8_lossy(&o.stdout)
        .trim()
        .ends_with("tiny-F32.gguf"));
    let by_name = tokens_json(&hub.url, &home, "tiny/gpt-oss-GGUF:Q8_0");
    let by_path = tokens_json(
        &hub.url,
        &home,
        fixtures()
            .join("gguf/tiny-llamacpp-q8_0.gguf")
            .to_str()
            .unwrap(),
    );
    assert_eq!(by_name["tokens"], by_path["tokens"]);
    let o = gptoss(&hub.url, &home, &["pull", "tiny/gpt-oss-GGUF"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("several GGUFs") && err.contains("tiny-F32.gguf"),
        "{err}"
    );
    let o = gptoss(
        &hub.url,
        &home,
        &["run", "-m", "tiny/no-such-repo", "-p", "hi"],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("--model tiny/no-such-repo: no such file or directory")
            && err.contains("404"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&home);
}

/// A cache as huggingface_hub lays it out (blobs named by ETag, relative snapshot links, refs/main) is
/// used without downloading anything.
#[test]
fn a_cache_filled_by_huggingface_hub_is_reused() {
    let hub = Hub::start();
    let home = scratch("interop");
    let dir = repo_dir(&home, "tiny/gpt-oss");
    let snapshot = dir.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(dir.join("blobs")).unwrap();
    std::fs::create_dir_all(dir.join("refs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::write(dir.join("refs/main"), COMMIT).unwrap();
    {
        let st = hub.state.lock().unwrap();
        for (name, f) in &st.repos["tiny/gpt-oss"] {
            if name.contains('/') || !(name.ends_with(".json") || name.ends_with(".safetensors")) {
                continue;
            }
            std::fs::write(dir.join("blobs").join(&f.etag), &f.bytes).unwrap();
            std::os::unix::fs::symlink(Path::new("../../blobs").join(&f.etag), snapshot.join(name))
                .unwrap();
        }
    }
    let o = ok(gptoss(&hub.url, &home, &["pull", "tiny/gpt-oss"]));
    assert!(String::from_utf8_lossy(&o.stderr).contains("in the cache"));
    assert!(hub.downloads().is_empty(), "{:?}", hub.downloads());
    let _ = std::fs::remove_dir_all(&home);
}
